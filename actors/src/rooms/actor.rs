//! The room actor: owns one [`RoomState`], assigns `seq`, stores history and fans
//! frames out to members' outboxes. A frame for many members is serialized once and
//! the same bytes are queued for each.
//!
//! In a cluster (`clustered`) the actor is this node's *replica* of the room. The
//! store assigns `seq` and keeps the history; a message sent here is delivered
//! when the store answers with its `seq`, and one sent on another node arrives as
//! a [`RoomEv::Message`]. Either way the replica delivers only the next expected
//! `seq` (a gap waits briefly, then is filled from the store's history). Typing,
//! reads, signals and presence are delivered here first and published to the
//! other member nodes. While the store is unreachable,
//! a replica whose members are all on this node goes on alone (local `seq`, local
//! history) and restores the store from what it holds when the connection returns
//! ([`ResyncRoom`]); a room with members on other nodes refuses `send` instead
//! (`internal`, `retry_after_ms`), because the other replicas would hand out the
//! same local seqs and one of two acknowledged messages would be lost.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{
    Actor, ActorContext, ActorFutureExt, Addr, AsyncContext, Context, Handler, Recipient,
    WrapFuture,
};
use rendezvous_protocol::{
    ChatMessage, ErrorCode, FrameRef, HistoryItem, PresenceStatus, ServerFrame,
};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tracing::{debug, warn};

use super::messages::*;
use super::room::{RoomKind, RoomState};
use crate::bridge::events::{MemberStatus, RoomEv};
use crate::bridge::{RoomSeed, StoredKind};
use crate::budget::Budget;
use crate::clock::now_ms;
use crate::directory::Directory;
use crate::ids::{random_id, UserId};
use crate::metrics as m;
use crate::outbox::{Class, Outbox};
use crate::state::Shared;

/// How long a closed room keeps answering `not_in_room` to late frames before the
/// actor stops. Sessions find rooms through the directory, which forgets a room the
/// moment it closes, so only frames already in flight can arrive here.
const TOMBSTONE: Duration = Duration::from_secs(5);
/// How long a replica waits for a missing `seq` before it reads the store.
const GAP_WAIT: Duration = Duration::from_millis(250);

pub struct RoomActor {
    state: RoomState,
    shared: Arc<Shared>,
    /// The directory this room is registered in; it removes itself when it closes.
    directory: Arc<Directory<Addr<RoomActor>>>,
    /// The supervisor, for joins that reached this room as it closed.
    bounce: Recipient<JoinPublicRoom>,
    closed: bool,
    /// This is a cluster replica (see the module doc).
    clustered: bool,
    /// The replica knows the room's `seq` (messages before it are buffered).
    loaded: bool,
    /// Messages past the next expected `seq`, waiting for the gap to fill.
    pending: BTreeMap<u64, ChatMessage>,
    /// A gap check is scheduled.
    gap_check: bool,
    /// Appends under way, by arrival.
    appends: BTreeMap<u64, PendingAppend>,
    next_append: u64,
}

impl RoomActor {
    pub fn new(
        state: RoomState,
        shared: Arc<Shared>,
        clustered: bool,
        directory: Arc<Directory<Addr<RoomActor>>>,
        bounce: Recipient<JoinPublicRoom>,
    ) -> Self {
        // A fresh match room starts at seq 0; a public replica learns its seq from
        // the first join's answer.
        let loaded = !clustered || state.kind == RoomKind::Match;
        Self {
            state,
            shared,
            directory,
            bounce,
            closed: false,
            clustered,
            loaded,
            pending: BTreeMap::new(),
            gap_check: false,
            appends: BTreeMap::new(),
            next_append: 0,
        }
    }

    pub fn mark_loaded(&mut self) {
        self.loaded = true;
    }

    fn stored_kind(&self) -> StoredKind {
        match self.state.kind {
            RoomKind::Match => StoredKind::Match,
            RoomKind::Public => StoredKind::Public,
        }
    }

    fn node(&self) -> Arc<str> {
        Arc::from(self.shared.bridge.node_id())
    }
}

impl Actor for RoomActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        metrics::gauge!(m::ROOMS_OPEN).increment(1.0);
        // A member whose session ended between the claim and now holds an offline
        // seat, so the grace timer runs for them like for any dropped connection.
        // The seat carries the outbox the opener looked up: none, or one closed
        // since (a session closes its outbox as it stops or is replaced).
        let stale: Vec<(UserId, u64)> = self
            .state
            .members
            .iter()
            .filter(|mb| mb.node.is_none())
            .filter(|mb| mb.outbox.as_ref().is_none_or(|o| o.close_code() != 0))
            .map(|mb| (mb.user.clone(), mb.session_id))
            .collect();
        ctx.run_interval(DEAD_SEAT_SWEEP, |act, ctx| act.sweep_dead_seats(ctx));
        for (user, session_id) in stale {
            // A seat taken without an outbox is already marked offline, which
            // `go_offline` reads as "grace timer running"; clear the mark so the
            // timer starts (else the seat is never released and the room leaks).
            if let Some(member) = self.state.member_mut(&user) {
                member.offline_since = None;
            }
            self.go_offline(user, session_id, ctx);
        }
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        metrics::gauge!(m::ROOMS_OPEN).decrement(1.0);
    }
}

/// How often a room looks for members whose connection closed without telling it
/// (a session that ended in the instant between a match and its room opening).
const DEAD_SEAT_SWEEP: Duration = Duration::from_secs(1);

impl RoomActor {
    fn sweep_dead_seats(&mut self, ctx: &mut Context<Self>) {
        let dead: Vec<(UserId, u64)> =
            self.state
                .members
                .iter()
                .filter(|mb| mb.node.is_none())
                .filter(|mb| mb.outbox.as_ref().is_some_and(|o| o.close_code() != 0))
                // A newer session of the same user replaced this one (4009): it closed
                // the old outbox a moment before its `MemberOnline` reaches this room.
                // Marking the seat offline in between would tell the others `offline`
                // and at once `online` again for what is not a departure.
                .filter(|mb| {
                    !self.shared.registry.get(mb.user.as_str()).is_some_and(|e| {
                        e.session_id != mb.session_id && e.outbox.close_code() == 0
                    })
                })
                .map(|mb| (mb.user.clone(), mb.session_id))
                .collect();
        for (user, session_id) in dead {
            self.go_offline(user, session_id, ctx);
        }
    }
}

impl Handler<PostMessage> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: PostMessage, ctx: &mut Self::Context) {
        if !self.check_member(&msg.user, &msg.reply) {
            return;
        }
        let ts = now_ms();
        self.shared.hot.messages.increment(1);
        if !self.clustered {
            let stored = self.state.append(random_id("m"), &msg.user, msg.text, ts);
            // Stored first, then acknowledged: an ack always means `history` has it.
            ack(&msg.reply, msg.client_msg_id, &stored);
            self.deliver_message(&stored);
            return;
        }
        let draft = ChatMessage {
            room_id: self.state.id.to_string(),
            seq: 0,
            msg_id: random_id("m"),
            sender: msg.user.to_string(),
            text: msg.text,
            ts,
        };
        let fut = self.shared.bridge.room_append(&draft);
        let id = self.next_append;
        self.next_append += 1;
        self.appends.insert(
            id,
            PendingAppend {
                draft,
                reply: msg.reply,
                client_msg_id: msg.client_msg_id,
                result: None,
            },
        );
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            if let Some(p) = act.appends.get_mut(&id) {
                p.result = Some(res);
            }
            act.finish_appends(ctx);
        }));
    }
}

/// A `send` whose append to the store is under way. Answers go out in the order
/// the sends came in, whatever order the replies are polled in.
struct PendingAppend {
    draft: ChatMessage,
    reply: Outbox,
    client_msg_id: Option<String>,
    result: Option<Result<Option<u64>, crate::bridge::BridgeError>>,
}

impl RoomActor {
    /// Answer every finished append at the front of the queue, in order.
    fn finish_appends(&mut self, ctx: &mut Context<Self>) {
        while let Some(mut entry) = self.appends.first_entry() {
            let Some(result) = entry.get_mut().result.take() else { break };
            let p = entry.remove();
            match result {
                // Stored in the room's stream: acknowledged, then delivered here in
                // seq order among the messages other nodes stored (their feed
                // brings those; this node's own are not published back to it).
                Ok(Some(seq)) => {
                    let stored = ChatMessage { seq, ..p.draft };
                    ack(&p.reply, p.client_msg_id, &stored);
                    self.on_message(stored, ctx);
                }
                Ok(None) => error(
                    &p.reply,
                    ErrorCode::NotInRoom,
                    format!("not a member of room {}", self.state.id),
                ),
                Err(e) if self.has_remote_members() => {
                    // Members on other nodes take their seqs from the store too: a
                    // local seq now could be handed out twice, once here and once
                    // there, and one of the two acknowledged messages would be lost
                    // when the store comes back. Not stored, so not acknowledged.
                    debug!(room = %self.state.id, error = %e, "append while the store is down; refused");
                    metrics::counter!(m::ERRORS_TOTAL, "code" => ErrorCode::Internal.as_str())
                        .increment(1);
                    p.reply.push_frame(
                        &ServerFrame::Error {
                            code: ErrorCode::Internal,
                            message: format!(
                                "room {} spans nodes and the shared store is unreachable: \
                                 the message was not stored; send it again",
                                self.state.id
                            ),
                            retry_after_ms: Some(STORE_DOWN_RETRY_MS),
                            action: Some("send".into()),
                        },
                        Class::Essential,
                    );
                }
                Err(e) => {
                    // The store is unreachable and every member is on this node: carry
                    // on alone (see the module doc); the reseed stores it later.
                    debug!(room = %self.state.id, error = %e, "append while the store is down; local seq");
                    let sender = UserId::from(p.draft.sender.as_str());
                    let stored =
                        self.state.append(p.draft.msg_id, &sender, p.draft.text, p.draft.ts);
                    ack(&p.reply, p.client_msg_id, &stored);
                    self.deliver_message(&stored);
                }
            }
        }
    }
}

/// When a client refused for an unreachable store should try again.
const STORE_DOWN_RETRY_MS: u64 = 1_000;

fn ack(reply: &Outbox, client_msg_id: Option<String>, stored: &ChatMessage) {
    let frame = FrameRef::Ack {
        client_msg_id: client_msg_id.as_deref(),
        room_id: &stored.room_id,
        seq: stored.seq,
        msg_id: &stored.msg_id,
    };
    reply.push(Utf8Bytes::from(frame.to_json()), Class::Essential);
}

impl Handler<RelayEvent> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: RelayEvent, _ctx: &mut Self::Context) {
        if !self.check_member(&msg.user, &msg.reply) {
            return;
        }
        let user_id = msg.user.to_string();
        let others = self.state.members.len().saturating_sub(1);
        let (ev, recipients) = match msg.event {
            Relay::Typing { active } => (RoomEv::Typing { user: user_id, active }, others),
            Relay::Read { seq } => {
                (RoomEv::Read { user: user_id, seq: seq.min(self.state.last_seq) }, others)
            }
            Relay::Signal { payload, to } => {
                if let Some(to) = &to {
                    if *to == msg.user || !self.state.is_member(to) {
                        return error(
                            &msg.reply,
                            ErrorCode::NotInRoom,
                            format!("{to} is not another member of {}", self.state.id),
                        );
                    }
                }
                let max = self.shared.config.max_signal_broadcast_members;
                if to.is_none() && self.state.members.len() > max {
                    return error(
                        &msg.reply,
                        ErrorCode::BadRequest,
                        format!(
                            "room {} has {} members: a signal without `to` goes only to rooms \
                             of at most {max}; name its recipient with `to`",
                            self.state.id,
                            self.state.members.len()
                        ),
                    );
                }
                let n = if to.is_some() { 1 } else { others };
                (RoomEv::Signal { from: user_id, to: to.map(|t| t.to_string()), payload }, n)
            }
        };
        let frame_bytes = self.deliver_relay(&ev);
        // The session charged one recipient; the rest of the fan-out is charged here.
        msg.budget.charge((frame_bytes as u64) * recipients.saturating_sub(1) as u64);
        if self.clustered && self.has_remote_members() {
            self.shared.bridge.room_event(&self.state.id, ev);
        }
    }
}

impl Handler<FetchHistory> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: FetchHistory, ctx: &mut Self::Context) {
        if !self.check_member(&msg.user, &msg.reply) {
            return;
        }
        let local = self.state.history_after(msg.after_seq, msg.limit);
        // The local ring answers when it covers the range; otherwise the store's
        // stream, which keeps more (and what this replica never saw).
        let covered = self.state.last_seq == msg.after_seq
            || local.first().is_some_and(|m| m.seq == msg.after_seq + 1);
        if !self.clustered || covered {
            return self.send_history(&msg.reply, local, &msg.budget);
        }
        let fut = self.shared.bridge.room_history(&self.state.id, msg.after_seq, msg.limit);
        ctx.spawn(fut.into_actor(self).map(move |res, act, _| match res {
            Ok(stored) => act.send_history(&msg.reply, stored, &msg.budget),
            Err(_) => act.send_history(&msg.reply, local, &msg.budget),
        }));
    }
}

impl Handler<JoinRoom> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: JoinRoom, ctx: &mut Self::Context) {
        let j = msg.join;
        if self.closed {
            // Closed while the join was in flight: the supervisor opens a fresh room.
            self.bounce.do_send(j);
            return;
        }
        if !self.clustered {
            return self.seat_joiner(j);
        }
        let fut = self.shared.bridge.room_join(&self.state.id, &j.user);
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            match res {
                Ok(snapshot) => {
                    let me = act.node();
                    for (user, node) in snapshot.members {
                        if node != me && user != j.user {
                            act.state.seat_remote(user, node);
                        }
                    }
                    if !act.loaded {
                        act.state.last_seq = act.state.last_seq.max(snapshot.last_seq);
                        act.loaded = true;
                        act.pending.retain(|seq, _| *seq > snapshot.last_seq);
                        act.drain_pending(ctx);
                    }
                }
                Err(e) => {
                    warn!(room = %act.state.id, error = %e, "join while the store is down; local only");
                    act.loaded = true;
                }
            }
            act.seat_joiner(j);
        }));
    }
}

impl Handler<LeaveRoom> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: LeaveRoom, ctx: &mut Self::Context) {
        // `next` names no room: its session picked the last match room, which the
        // partner may have closed meanwhile. Leaving it then is done already, not
        // an error (the client has its `left` from the session).
        let gone = self.closed || !self.state.is_member(&msg.user);
        if msg.reason == LeaveReason::Next && gone {
            return;
        }
        if !self.check_member(&msg.user, &msg.reply) {
            return;
        }
        if msg.reason == LeaveReason::Next {
            let ttl = Duration::from_secs(self.shared.config.skip_ttl_secs);
            for other in self.state.members.iter().filter(|o| o.user != msg.user) {
                self.shared.avoid_pair(&msg.user, &other.user, ttl);
            }
        }
        if msg.reason == LeaveReason::Leave {
            msg.reply.push_frame(
                &ServerFrame::Left { room_id: self.state.id.to_string() },
                Class::Essential,
            );
        }
        // Everyone left behind is told (presence `left`).
        let told = self.state.members.len().saturating_sub(1) as u64;
        msg.budget.charge(told * crate::budget::cost::FRAME);
        self.leave_everywhere(&msg.user, None);
        self.remove_member(&msg.user, ctx);
    }
}

impl Handler<MemberOnline> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: MemberOnline, _ctx: &mut Self::Context) {
        let Some(member) = self.state.member_mut(&msg.user) else { return };
        let was_offline = member.outbox.is_none();
        member.node = None;
        member.session_id = msg.session_id;
        member.outbox = Some(msg.outbox);
        member.offline_since = None;
        if was_offline {
            self.presence(&msg.user, PresenceStatus::Online);
            self.publish_member(&msg.user, MemberStatus::Online);
        }
    }
}

impl Handler<MemberOffline> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: MemberOffline, ctx: &mut Self::Context) {
        self.go_offline(msg.user, msg.session_id, ctx);
    }
}

impl Handler<CloseRoom> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: CloseRoom, ctx: &mut Self::Context) {
        if self.clustered && !self.closed {
            self.shared.bridge.room_close(&self.state.id, msg.reason);
        }
        self.close(msg.reason, ctx);
    }
}

impl Handler<RoomInbound> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: RoomInbound, ctx: &mut Self::Context) {
        if self.closed {
            return;
        }
        match msg.ev {
            RoomEv::Message { seq, msg_id, sender, text, ts } => {
                let room_id = self.state.id.to_string();
                self.on_message(ChatMessage { room_id, seq, msg_id, sender, text, ts }, ctx);
            }
            ev @ (RoomEv::Typing { .. } | RoomEv::Read { .. } | RoomEv::Signal { .. }) => {
                self.deliver_relay(&ev);
            }
            RoomEv::Member { user, node, status } => {
                let user = UserId::from(user);
                let node: Arc<str> = Arc::from(node);
                match status {
                    MemberStatus::Joined | MemberStatus::Online => {
                        // Already seen online on that node: nothing changes.
                        let same = self.state.member(&user).is_some_and(|mb| {
                            mb.node.as_ref() == Some(&node) && mb.offline_since.is_none()
                        });
                        let had_local =
                            self.state.member(&user).is_some_and(|mb| mb.node.is_none());
                        self.state.seat_remote(user.clone(), node);
                        if had_local {
                            // The user moved to another node (this session is kicked).
                            self.shared.remove_membership(&user, &self.state.id);
                        }
                        if !same {
                            self.presence(&user, PresenceStatus::Online);
                        }
                    }
                    MemberStatus::Offline => {
                        if let Some(mb) = self.state.member_mut(&user) {
                            if mb.node.as_ref() == Some(&node) && mb.offline_since.is_none() {
                                mb.offline_since = Some(Instant::now());
                                self.presence(&user, PresenceStatus::Offline);
                            }
                        }
                    }
                    MemberStatus::Left => self.remove_member(&user, ctx),
                }
                self.detach_if_unused(ctx);
            }
            RoomEv::Closed { reason } => {
                let reason: &'static str =
                    if reason == "blocked" { "blocked" } else { "partner_left" };
                self.close(reason, ctx);
            }
        }
    }
}

impl Handler<NodeLost> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: NodeLost, ctx: &mut Self::Context) {
        let lost: Vec<UserId> = self
            .state
            .members
            .iter()
            .filter(|mb| mb.node.as_ref() == Some(&msg.node))
            .map(|mb| mb.user.clone())
            .collect();
        for user in lost {
            let Some(mb) = self.state.member_mut(&user) else { continue };
            let newly = mb.offline_since.is_none();
            let since = *mb.offline_since.get_or_insert_with(Instant::now);
            if newly {
                self.presence(&user, PresenceStatus::Offline);
            }
            let node = msg.node.clone();
            let grace = Duration::from_millis(self.shared.config.reconnect_grace_ms);
            ctx.run_later(grace, move |act, ctx| {
                // Gone unless the user came back meanwhile: a reconnect to the lost
                // node started again under the same id keeps `node` the same, but its
                // `online` event cleared `offline_since`.
                let still_gone = act.state.member(&user).is_some_and(|mb| {
                    mb.node.as_ref() == Some(&node) && mb.offline_since == Some(since)
                });
                if still_gone {
                    act.leave_everywhere(&user, Some(node));
                    act.remove_member(&user, ctx);
                }
            });
        }
    }
}

impl Handler<ResyncRoom> for RoomActor {
    type Result = ();

    fn handle(&mut self, _msg: ResyncRoom, ctx: &mut Self::Context) {
        if !self.clustered || self.closed {
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
                if store_seq > ours {
                    // Others went on meanwhile: fetch what this replica missed.
                    act.loaded = true;
                    act.fill_gap(ctx);
                }
            }
            Err(e) => debug!(room = %act.state.id, error = %e, "reseed failed; retried at the next reconnect"),
        }));
    }
}

impl RoomActor {
    /// True when `user` is a member; otherwise answers `not_in_room`.
    fn check_member(&self, user: &UserId, reply: &Outbox) -> bool {
        if !self.closed && self.state.is_member(user) {
            return true;
        }
        error(reply, ErrorCode::NotInRoom, format!("not a member of room {}", self.state.id));
        false
    }

    fn has_remote_members(&self) -> bool {
        self.state.members.iter().any(|mb| mb.node.is_some())
    }

    /// Answer a `history` request and charge its bytes to the requester's budget
    /// (after the fact: the page's size is known only now).
    fn send_history(&self, reply: &Outbox, messages: Vec<ChatMessage>, budget: &Budget) {
        let messages = messages.into_iter().map(HistoryItem::Message).collect();
        let json = ServerFrame::History { room_id: self.state.id.to_string(), messages }.to_json();
        budget.charge(json.len() as u64);
        reply.push(Utf8Bytes::from(json), Class::Essential);
    }

    fn seat_joiner(&mut self, j: JoinPublicRoom) {
        let max = self.shared.config.max_public_room_members;
        if !self.state.is_member(&j.user) && self.state.members.len() >= max {
            if self.clustered {
                // The store seated them already; take the seat back.
                self.leave_everywhere(&j.user, None);
            }
            let message = format!("room {} is full ({max} members)", self.state.id);
            return super::replies::refuse_join(&self.shared, &j, message);
        }
        let new = self.state.seat(j.user.clone(), j.session_id, Some(j.outbox.clone()));
        if new {
            // Usually reserved by the session already (then this changes nothing).
            self.shared.add_membership(&j.user, &self.state.id);
        }
        let joined = ServerFrame::Joined {
            room_id: self.state.id.to_string(),
            members: self.state.member_ids(),
        }
        .to_json();
        let mut cost = joined.len() as u64;
        j.outbox.push(Utf8Bytes::from(joined), Class::Essential);
        if new {
            self.presence(&j.user, PresenceStatus::Online);
            let told = self.state.members.len().saturating_sub(1) as u64;
            cost += told * crate::budget::cost::FRAME;
        }
        j.budget.charge(cost);
    }

    /// Deliver a typing, read or signal event to the members of this node; returns
    /// the size of the frame (bytes per recipient).
    fn deliver_relay(&self, ev: &RoomEv) -> usize {
        let room_id = self.state.id.to_string();
        match ev {
            RoomEv::Typing { user, active } => {
                let f = ServerFrame::Typing { room_id, user_id: user.clone(), active: *active };
                self.fan_out(&f, Some(&UserId::from(user.as_str())), Class::Droppable)
            }
            RoomEv::Read { user, seq } => {
                let f = ServerFrame::Read { room_id, user_id: user.clone(), seq: *seq };
                self.fan_out(&f, Some(&UserId::from(user.as_str())), Class::Essential)
            }
            RoomEv::Signal { from, to, payload } => {
                let f =
                    ServerFrame::Signal { room_id, from: from.clone(), payload: payload.clone() };
                match to {
                    None => self.fan_out(&f, Some(&UserId::from(from.as_str())), Class::Essential),
                    Some(to) => {
                        let bytes = Utf8Bytes::from(f.to_json());
                        let len = bytes.len();
                        if let Some(out) = self
                            .state
                            .member(&UserId::from(to.as_str()))
                            .and_then(|mb| mb.outbox.as_ref())
                        {
                            out.push(bytes, Class::Essential);
                        }
                        len
                    }
                }
            }
            _ => 0,
        }
    }

    /// A stored message from the store's feed: deliver in `seq` order.
    fn on_message(&mut self, msg: ChatMessage, ctx: &mut Context<Self>) {
        if self.loaded && msg.seq <= self.state.last_seq {
            return; // already delivered (a resync overlap)
        }
        self.pending.insert(msg.seq, msg);
        if self.loaded {
            self.drain_pending(ctx);
        }
    }

    fn drain_pending(&mut self, ctx: &mut Context<Self>) {
        while let Some(entry) = self.pending.first_entry() {
            let seq = *entry.key();
            if seq <= self.state.last_seq {
                entry.remove();
                continue;
            }
            if seq != self.state.last_seq + 1 {
                break;
            }
            let stored = self.state.push_stored(entry.remove());
            self.deliver_message(&stored);
        }
        if !self.pending.is_empty() && !self.gap_check {
            self.gap_check = true;
            ctx.run_later(GAP_WAIT, |act, ctx| {
                act.gap_check = false;
                if !act.pending.is_empty() {
                    metrics::counter!(m::BRIDGE_SEQ_GAPS_TOTAL).increment(1);
                    act.fill_gap(ctx);
                }
            });
        }
    }

    /// Read what follows `last_seq` from the store and deliver it.
    fn fill_gap(&mut self, ctx: &mut Context<Self>) {
        let fut = self.shared.bridge.room_history(&self.state.id, self.state.last_seq, 200);
        ctx.spawn(fut.into_actor(self).map(|res, act, ctx| match res {
            Ok(messages) => {
                let more = messages.len() == 200;
                for m in messages {
                    act.pending.insert(m.seq, m);
                }
                act.drain_pending(ctx);
                if more {
                    act.fill_gap(ctx);
                }
            }
            Err(e) => debug!(room = %act.state.id, error = %e, "gap fill failed; retried"),
        }));
    }

    /// Fan a stored message out to this node's members, with its metrics.
    fn deliver_message(&self, stored: &ChatMessage) {
        let bytes = Utf8Bytes::from(FrameRef::Message(stored).to_json());
        let n = self.fan_out_bytes(bytes, None, Class::Essential);
        self.shared.hot.delivered.increment(n as u64);
        let age_ms = now_ms().saturating_sub(stored.ts);
        self.shared.hot.delivery_latency.record(age_ms as f64 / 1_000.0);
    }

    /// Serialize once, queue the same bytes for every online member but `except`;
    /// returns the frame's size in bytes.
    fn fan_out(&self, frame: &ServerFrame, except: Option<&UserId>, class: Class) -> usize {
        let bytes = Utf8Bytes::from(frame.to_json());
        let len = bytes.len();
        self.fan_out_bytes(bytes, except, class);
        len
    }

    /// Queue the same serialized frame for every online member but `except`;
    /// returns how many members it was queued for.
    fn fan_out_bytes(&self, bytes: Utf8Bytes, except: Option<&UserId>, class: Class) -> usize {
        let mut n = 0;
        for member in &self.state.members {
            if Some(&member.user) == except {
                continue;
            }
            if let Some(out) = &member.outbox {
                out.push(bytes.clone(), class);
                n += 1;
            }
        }
        n
    }

    fn presence(&self, user: &UserId, status: PresenceStatus) {
        let f = ServerFrame::Presence {
            room_id: self.state.id.to_string(),
            user_id: user.to_string(),
            status,
        };
        self.fan_out(&f, Some(user), Class::Droppable);
    }

    /// Tell the other member nodes about a local member's presence.
    fn publish_member(&self, user: &UserId, status: MemberStatus) {
        if self.clustered && self.has_remote_members() {
            let ev =
                RoomEv::Member { user: user.to_string(), node: self.node().to_string(), status };
            self.shared.bridge.room_event(&self.state.id, ev);
        }
    }

    /// Remove the seat in the store too (which tells the other nodes).
    fn leave_everywhere(&self, user: &UserId, on_node: Option<Arc<str>>) {
        if self.clustered {
            let fut =
                self.shared.bridge.room_leave(&self.state.id, user, on_node, self.stored_kind());
            actix::spawn(async move {
                let _ = fut.await;
            });
        }
    }

    fn go_offline(&mut self, user: UserId, session_id: u64, ctx: &mut Context<Self>) {
        let Some(member) = self.state.member_mut(&user) else { return };
        if member.node.is_some()
            || member.session_id != session_id
            || member.offline_since.is_some() && member.outbox.is_none()
        {
            return;
        }
        member.outbox = None;
        member.offline_since = Some(std::time::Instant::now());
        self.presence(&user, PresenceStatus::Offline);
        self.publish_member(&user, MemberStatus::Offline);
        let grace = Duration::from_millis(self.shared.config.reconnect_grace_ms);
        ctx.run_later(grace, move |act, ctx| {
            let still_gone = act.state.member(&user).is_some_and(|m| {
                m.node.is_none() && m.session_id == session_id && m.outbox.is_none()
            });
            if still_gone {
                act.leave_everywhere(&user, Some(act.node()));
                act.remove_member(&user, ctx);
            }
        });
    }

    fn remove_member(&mut self, user: &UserId, ctx: &mut Context<Self>) {
        if !self.state.unseat(user) {
            return;
        }
        self.shared.remove_membership(user, &self.state.id);
        self.presence(user, PresenceStatus::Left);
        if self.clustered && !self.state.has_local_members() && self.state.members.len() > 1 {
            // The room goes on elsewhere; this node has nobody left in it.
            return self.forget(ctx);
        }
        match self.state.kind {
            RoomKind::Match if self.state.members.len() <= 1 => self.close("partner_left", ctx),
            RoomKind::Public if !self.state.has_local_members() => {
                let grace = Duration::from_millis(self.shared.config.empty_room_grace_ms);
                ctx.run_later(grace, |act, ctx| {
                    if !act.state.has_local_members() {
                        act.close("empty", ctx);
                    }
                });
            }
            _ => {}
        }
    }

    /// A replica with no members on this node has nothing to do here.
    fn detach_if_unused(&mut self, ctx: &mut Context<Self>) {
        if self.clustered && self.state.kind == RoomKind::Match && !self.state.has_local_members() {
            self.forget(ctx);
        }
    }

    /// Tell everyone, forget the room everywhere, and stop after the tombstone time.
    fn close(&mut self, reason: &'static str, ctx: &mut Context<Self>) {
        if self.closed {
            return;
        }
        let f = ServerFrame::RoomClosed {
            room_id: self.state.id.to_string(),
            reason: Some(reason.into()),
        };
        self.fan_out(&f, None, Class::Essential);
        self.forget(ctx);
    }

    fn forget(&mut self, ctx: &mut Context<Self>) {
        if self.closed {
            return;
        }
        self.closed = true;
        if self.state.kind == RoomKind::Public {
            self.shared.public_rooms.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        for member in std::mem::take(&mut self.state.members) {
            if member.node.is_none() {
                self.shared.remove_membership(&member.user, &self.state.id);
            }
        }
        let me = ctx.address();
        self.directory.remove_if_current(&self.state.id, &me);
        ctx.run_later(TOMBSTONE, |_, ctx| ctx.stop());
    }
}

fn error(out: &Outbox, code: ErrorCode, message: String) {
    metrics::counter!(m::ERRORS_TOTAL, "code" => code.as_str()).increment(1);
    out.push_frame(
        &ServerFrame::Error { code, message, retry_after_ms: None, action: None },
        Class::Essential,
    );
}
