//! The room actor: owns one [`RoomState`], assigns `seq`, stores history and fans
//! frames out to members' outboxes. A frame for many members is serialized once and
//! the same bytes are queued for each.
//!
//! A room is either of this node alone or this node's *replica* of a cluster room;
//! its [`Replication`] says which, and every place where the two differ is in
//! [`super::replica`] (storing a message, seating a joiner, history the ring lacks,
//! publishing to other nodes, resync). The handlers here are the same for both.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, ActorContext, AsyncContext, Context, Handler};
use rendezvous_protocol::{
    ChatMessage, ErrorCode, FrameRef, HistoryItem, PresenceStatus, RoomDetail,
    RoomKind as WireRoomKind, ServerFrame,
};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tracing::debug;

use super::messages::*;
use super::replication::{Replication, Sender};
use super::room::{Member, RoomKind, RoomState};
use crate::bridge::events::{MemberStatus, RoomEv};
use crate::budget::Budget;
use crate::clock::now_ms;
use crate::directory::Directory;
use crate::ids::{random_id, RoomId, UserId};
use crate::metrics as m;
use crate::outbox::{Class, Outbox};
use crate::state::Shared;

/// How long a closed room keeps answering `not_in_room` to late frames before the
/// actor stops. Sessions find rooms through the directory, which forgets a room the
/// moment it closes, so only frames already in flight can arrive here.
const TOMBSTONE: Duration = Duration::from_secs(5);

pub struct RoomActor {
    pub(super) state: RoomState,
    pub(super) shared: Arc<Shared>,
    pub(super) closed: bool,
    /// A room of this node alone, or a cluster replica (with its ordering).
    pub(super) replication: Replication,
    /// Where the room is listed and who takes bounced joins.
    links: RoomLinks,
    /// The dead-seat sweep, running while a seat of this node has an outbox.
    sweep: Option<actix::SpawnHandle>,
}

/// What a room reaches besides the shared state: the directory it is listed in
/// (it removes itself when it closes) and the supervisor, for joins that reached
/// it as it closed.
pub struct RoomLinks {
    pub directory: Arc<Directory<actix::Addr<RoomActor>>>,
    pub bounce: actix::Recipient<JoinPublicRoom>,
}

impl RoomActor {
    /// A room whose members are all on this node, without a cluster: it assigns
    /// `seq` itself.
    pub fn local(state: RoomState, shared: Arc<Shared>, links: RoomLinks) -> Self {
        Self { state, shared, closed: false, replication: Replication::Local, links, sweep: None }
    }

    /// This node's replica of a cluster room. `loaded`: `state.last_seq` is the
    /// room's seq (a fresh match room, a snapshot); a public replica opened by a
    /// join learns it from the join's answer.
    pub fn replica(state: RoomState, shared: Arc<Shared>, loaded: bool, links: RoomLinks) -> Self {
        let replication = Replication::cluster(state.last_seq, loaded);
        Self { state, shared, closed: false, replication, links, sweep: None }
    }

    /// This node's id (where its members' seats are in the store).
    pub(super) fn node(&self) -> Arc<str> {
        Arc::from(self.shared.bridge.node_id())
    }
}

impl Actor for RoomActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        metrics::gauge!(m::ROOMS_OPEN).increment(1.0);
        if self.replication.is_cluster() {
            // On Redis Cluster the room's events come on its own shard channel.
            self.shared.bridge.watch_room(&self.state.id, true);
        }
        // A member whose session ended between the claim and now holds an offline
        // seat, so the grace timer runs for them like for any dropped connection.
        // The outbox was carried from the match: none, or closed, means the session
        // is gone (one registry look-up per member, at the match).
        // A closed one whose user has a newer session here is not: that session
        // (it closed the old one with 4009) takes the seat with `MemberOnline`,
        // which waits in the mailbox behind this start.
        let stale = self.local_seats(|mb| match &mb.outbox {
            None => true,
            Some(o) => o.close_code() != 0 && !self.replaced(mb),
        });
        self.arm_sweep(ctx);
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
        if self.replication.is_cluster() {
            self.shared.bridge.watch_room(&self.state.id, false);
        }
    }
}

/// How often a room looks for members whose connection closed without telling it
/// (a session that ended in the instant between a match and its room opening).
const DEAD_SEAT_SWEEP: Duration = Duration::from_secs(1);

impl RoomActor {
    /// The seats of this node's members that `keep` picks, with their sessions.
    fn local_seats(&self, keep: impl Fn(&Member) -> bool) -> Vec<(UserId, u64)> {
        let local = self.state.members.iter().filter(|mb| mb.node.is_none());
        local.filter(|mb| keep(mb)).map(|mb| (mb.user.clone(), mb.session_id)).collect()
    }

    fn sweep_dead_seats(&mut self, ctx: &mut Context<Self>) {
        // A seat whose outbox closed is dead, unless a newer session of the same
        // user replaced this one (4009): it closed the old outbox a moment before
        // its `MemberOnline` reaches this room. Marking the seat offline in between
        // would tell the others `offline` and at once `online` again for what is
        // not a departure.
        let dead = self.local_seats(|mb| {
            mb.outbox.as_ref().is_some_and(|o| o.close_code() != 0) && !self.replaced(mb)
        });
        for (user, session_id) in dead {
            self.go_offline(user, session_id, ctx);
        }
        // Nobody left to watch: an idle room (its members gone, their seats in
        // grace) costs no timer; a seat that gets an outbox again re-arms it.
        if self.local_seats(|mb| mb.outbox.is_some()).is_empty() {
            if let Some(handle) = self.sweep.take() {
                ctx.cancel_future(handle);
            }
        }
    }

    /// Whether a newer, open session of the seat's user is registered here (it
    /// replaced the seat's session and is on its way to take the seat).
    fn replaced(&self, mb: &Member) -> bool {
        self.live_session(&mb.user)
            .is_some_and(|e| e.session_id != mb.session_id && e.outbox.close_code() == 0)
    }

    /// Start the dead-seat sweep unless it runs (or no local seat has an outbox).
    fn arm_sweep(&mut self, ctx: &mut Context<Self>) {
        if self.sweep.is_none() && !self.local_seats(|mb| mb.outbox.is_some()).is_empty() {
            self.sweep =
                Some(ctx.run_interval(DEAD_SEAT_SWEEP, |act, ctx| act.sweep_dead_seats(ctx)));
        }
    }
}

impl Handler<PostMessage> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: PostMessage, ctx: &mut Self::Context) {
        if self.closed || !self.state.is_member(&msg.user) {
            let message = format!("not a member of room {}", self.state.id);
            return error_for(
                &msg.reply,
                ErrorCode::NotInRoom,
                message,
                send_context(&msg.client_msg_id),
            );
        }
        let ts = now_ms();
        self.shared.hot.messages.increment(1);
        let draft = ChatMessage {
            room_id: self.state.id.to_string(),
            seq: 0,
            msg_id: random_id("m"),
            sender: msg.user.to_string(),
            text: msg.text,
            ts,
        };
        let sender = Sender { user: msg.user, reply: msg.reply, client_msg_id: msg.client_msg_id };
        if let Some(id) = &sender.client_msg_id {
            if let Some(original) = self.state.sent.get(&sender.user, id, ts) {
                // A resend (the first `ack` was lost with its connection).
                debug!(room = %self.state.id, seq = original.seq, "duplicate send answered");
                metrics::counter!(m::DUPLICATE_SENDS_TOTAL).increment(1);
                return ack(&sender, &self.state.id, original.seq, &original.msg_id);
            }
        }
        self.store_message(draft, sender, ctx);
    }
}

/// Remember a stored send's `client_msg_id` for duplicates, at `now_ms`.
pub(super) fn remember(state: &mut RoomState, to: &Sender, seq: u64, msg_id: &str, now_ms: u64) {
    if let Some(id) = &to.client_msg_id {
        let original = super::dedup::Original { seq, msg_id: msg_id.to_owned() };
        state.sent.record(&to.user, id, original, now_ms);
    }
}

/// Acknowledge a send: stored in `room` as `seq`.
pub(super) fn ack(to: &Sender, room: &RoomId, seq: u64, msg_id: &str) {
    let frame = FrameRef::Ack {
        client_msg_id: to.client_msg_id.as_deref(),
        room_id: room.as_str(),
        seq,
        msg_id,
    };
    to.reply.push(Utf8Bytes::from(frame.to_json()), Class::Essential);
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
        self.publish(ev);
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
        if covered {
            let span = self.held_span();
            return self.send_history(&msg.reply, local, span, &msg.budget);
        }
        self.history_beyond_ring(msg, local, ctx);
    }
}

impl Handler<DescribeRoom> for RoomActor {
    type Result = Option<RoomDetail>;

    fn handle(&mut self, _msg: DescribeRoom, _ctx: &mut Self::Context) -> Self::Result {
        if self.closed {
            return None;
        }
        Some(RoomDetail {
            room_id: self.state.id.to_string(),
            kind: match self.state.kind {
                RoomKind::Match => WireRoomKind::Match,
                RoomKind::Public => WireRoomKind::Public,
            },
            members: self.state.member_ids(),
            last_seq: self.state.last_seq,
        })
    }
}

impl Handler<JoinRoom> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: JoinRoom, ctx: &mut Self::Context) {
        let j = msg.join;
        if self.closed {
            // Closed while the join was in flight: the supervisor opens a fresh room.
            return self.bounce_join(j);
        }
        self.join_through_store(j, ctx);
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
            self.record_skip(&msg.user);
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

    fn handle(&mut self, msg: MemberOnline, ctx: &mut Self::Context) {
        if !self.state.is_member(&msg.user) {
            return;
        }
        if let Some(after) = msg.replay_after {
            // Stored between the session's `welcome` and now: not delivered to it.
            for missed in self.state.history_after(after, usize::MAX) {
                msg.outbox
                    .push(Utf8Bytes::from(FrameRef::Message(&missed).to_json()), Class::Essential);
            }
        }
        let Some(member) = self.state.member_mut(&msg.user) else { return };
        let was_offline = member.outbox.is_none();
        member.node = None;
        member.session_id = msg.session_id;
        member.outbox = Some(msg.outbox);
        member.offline_since = None;
        self.arm_sweep(ctx);
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

impl Handler<Evidence> for RoomActor {
    type Result = Option<Vec<ChatMessage>>;

    fn handle(&mut self, msg: Evidence, _ctx: &mut Self::Context) -> Self::Result {
        let both = self.state.is_member(&msg.reporter) && self.state.is_member(&msg.reported);
        (both && !self.closed).then(|| self.last_messages(msg.limit))
    }
}

impl Handler<CloseRoom> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: CloseRoom, ctx: &mut Self::Context) {
        if msg.with.as_ref().is_some_and(|u| !self.state.is_member(u)) {
            return;
        }
        if !self.closed {
            self.close_everywhere(msg.reason);
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
                self.on_feed_message(ChatMessage { room_id, seq, msg_id, sender, text, ts }, ctx);
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
                            self.remove_membership(&user);
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

impl Handler<RoomSubscribed> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: RoomSubscribed, ctx: &mut Self::Context) {
        if !self.closed {
            self.on_subscribed(msg.store_seq, ctx);
        }
    }
}

impl Handler<ResyncRoom> for RoomActor {
    type Result = ();

    fn handle(&mut self, _msg: ResyncRoom, ctx: &mut Self::Context) {
        if !self.closed {
            self.resync(ctx);
        }
    }
}

impl RoomActor {
    /// True when `user` is a member; otherwise answers `not_in_room`.
    pub(super) fn check_member(&self, user: &UserId, reply: &Outbox) -> bool {
        if !self.closed && self.state.is_member(user) {
            return true;
        }
        error(reply, ErrorCode::NotInRoom, format!("not a member of room {}", self.state.id));
        false
    }

    /// Answer a `history` request and charge its bytes to the requester's budget
    /// (after the fact: the page's size is known only now).
    /// `span`: the oldest seq still stored and the room's last, for the frame's
    /// `first_seq` / `last_seq`.
    pub(super) fn send_history(
        &self,
        reply: &Outbox,
        messages: Vec<ChatMessage>,
        span: (u64, u64),
        budget: &Budget,
    ) {
        let messages = messages.into_iter().map(HistoryItem::Message).collect();
        let json = ServerFrame::History {
            room_id: self.state.id.to_string(),
            messages,
            first_seq: Some(span.0),
            last_seq: Some(span.1),
        }
        .to_json();
        budget.charge(json.len() as u64);
        reply.push(Utf8Bytes::from(json), Class::Essential);
    }

    /// The oldest seq this room's ring holds and its last seq.
    pub(super) fn held_span(&self) -> (u64, u64) {
        (self.state.first_held_seq(), self.state.last_seq)
    }

    pub(super) fn seat_joiner(&mut self, j: JoinPublicRoom, ctx: &mut Context<Self>) {
        let max = self.shared.config.max_public_room_members;
        if !self.state.is_member(&j.user) && self.state.members.len() >= max {
            // A replica's store seated them already; take the seat back.
            self.leave_everywhere(&j.user, None);
            let message = format!("room {} is full ({max} members)", self.state.id);
            return super::replies::refuse_join(&self.shared, &j, message);
        }
        let new = self.state.seat(j.user.clone(), j.session_id, Some(j.outbox.clone()));
        self.arm_sweep(ctx);
        if new {
            // Usually reserved by the session already (then this changes nothing).
            self.add_membership(&j.user);
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

    /// Fan a stored message out to this node's members, with its metrics.
    pub(super) fn deliver_message(&self, stored: &ChatMessage) {
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

    pub(super) fn remove_member(&mut self, user: &UserId, ctx: &mut Context<Self>) {
        if self.state.is_member(user) {
            self.remember_for_reports();
        }
        if !self.state.unseat(user) {
            return;
        }
        self.remove_membership(user);
        self.presence(user, PresenceStatus::Left);
        if self.goes_on_elsewhere() {
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

    /// Stop being this room here: seats and memberships go, the directory forgets
    /// it, and the actor stops after the tombstone time.
    pub(super) fn forget(&mut self, ctx: &mut Context<Self>) {
        if self.closed {
            return;
        }
        self.remember_for_reports();
        self.closed = true;
        if self.state.kind == RoomKind::Public {
            self.shared.public_rooms.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        for member in std::mem::take(&mut self.state.members) {
            if member.node.is_none() {
                self.remove_membership(&member.user);
            }
        }
        self.unlist(ctx);
        ctx.run_later(TOMBSTONE, |_, ctx| ctx.stop());
    }
}

/// What the room reaches outside itself, one small method each: the directory,
/// the supervisor, the registry of live sessions, users' memberships and skips,
/// the moderation record.
impl RoomActor {
    /// The last `n` messages this room holds, oldest first.
    fn last_messages(&self, n: usize) -> Vec<ChatMessage> {
        self.state.history_after(self.state.last_seq.saturating_sub(n as u64), n)
    }

    /// A match room's members and last messages, kept for `report`s after a member
    /// leaves or the room closes.
    fn remember_for_reports(&self) {
        if self.state.kind != RoomKind::Match || self.closed {
            return;
        }
        let members = self.state.members.iter().map(|m| m.user.to_string()).collect();
        let evidence = self.last_messages(self.shared.moderation.evidence_messages());
        self.shared.moderation.room_closed(self.state.id.as_str(), members, evidence);
    }

    /// Remove this room from the directory (unless a newer room took its id).
    fn unlist(&self, ctx: &mut Context<Self>) {
        let me = ctx.address();
        self.links.directory.remove_if_current(&self.state.id, &me);
    }

    /// Hand a join that raced this room's close back to the supervisor, which
    /// opens a fresh room.
    fn bounce_join(&self, join: JoinPublicRoom) {
        self.links.bounce.do_send(join);
    }

    /// The live session of `user` on this node, if any.
    fn live_session(&self, user: &UserId) -> Option<crate::registry::SessionEntry> {
        self.shared.registry.get(user.as_str())
    }

    /// Record that `user` holds a seat in this room.
    pub(super) fn add_membership(&self, user: &UserId) {
        self.shared.add_membership(user, &self.state.id);
    }

    /// Record that `user` no longer holds a seat in this room.
    pub(super) fn remove_membership(&self, user: &UserId) {
        self.shared.remove_membership(user, &self.state.id);
    }

    /// `leaver` skipped (`next`) this room's other members: neither is matched
    /// with the other for `skip_ttl_secs`.
    fn record_skip(&self, leaver: &UserId) {
        let ttl = Duration::from_secs(self.shared.config.skip_ttl_secs);
        for other in self.state.members.iter().filter(|o| &o.user != leaver) {
            self.shared.avoid_pair(leaver, &other.user, ttl);
        }
    }
}

pub(super) fn error(out: &Outbox, code: ErrorCode, message: String) {
    error_for(out, code, message, ErrorContext::default());
}

/// What an error frame says beyond its code and message.
#[derive(Debug, Default)]
pub(super) struct ErrorContext {
    pub action: Option<&'static str>,
    pub client_msg_id: Option<String>,
    pub retry_after_ms: Option<u64>,
}

/// The context of an error answering a `send` with `client_msg_id`.
pub(super) fn send_context(client_msg_id: &Option<String>) -> ErrorContext {
    ErrorContext {
        action: Some("send"),
        client_msg_id: client_msg_id.clone(),
        retry_after_ms: None,
    }
}

/// An error frame with its context (action, `client_msg_id`, retry hint).
pub(super) fn error_for(out: &Outbox, code: ErrorCode, message: String, cx: ErrorContext) {
    metrics::counter!(m::ERRORS_TOTAL, "code" => code.as_str()).increment(1);
    out.push_frame(
        &ServerFrame::Error {
            code,
            message,
            retry_after_ms: cx.retry_after_ms,
            action: cx.action.map(str::to_owned),
            client_msg_id: cx.client_msg_id,
        },
        Class::Essential,
    );
}
