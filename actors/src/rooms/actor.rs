//! The room actor: owns one [`RoomState`], assigns `seq`, stores history and fans
//! frames out to members' outboxes. A frame for many members is serialized once and
//! the same bytes are queued for each.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix::{Actor, ActorContext, AsyncContext, Context, Handler};
use rendezvous_protocol::{ErrorCode, HistoryItem, PresenceStatus, ServerFrame};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::messages::*;
use super::room::{RoomKind, RoomState};
use crate::engine::Shared;
use crate::ids::{random_id, UserId};
use crate::metrics as m;
use crate::outbox::{Class, Outbox};

/// How long a closed room keeps answering `not_in_room` to late frames before the
/// actor stops. Sessions find rooms through the directory, which forgets a room the
/// moment it closes, so only frames already in flight can arrive here.
const TOMBSTONE: Duration = Duration::from_secs(5);

pub struct RoomActor {
    state: RoomState,
    shared: Arc<Shared>,
    closed: bool,
}

impl RoomActor {
    pub fn new(state: RoomState, shared: Arc<Shared>) -> Self {
        Self { state, shared, closed: false }
    }
}

impl Actor for RoomActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        metrics::gauge!(m::ROOMS_OPEN).increment(1.0);
        // A member whose session ended between the claim and now holds an offline
        // seat, so the grace timer runs for them like for any dropped connection.
        let stale: Vec<(UserId, u64)> = self
            .state
            .members
            .iter()
            .filter(|mb| {
                self.shared.registry.get(mb.user.as_str()).map(|e| e.session_id)
                    != Some(mb.session_id)
            })
            .map(|mb| (mb.user.clone(), mb.session_id))
            .collect();
        for (user, session_id) in stale {
            self.go_offline(user, session_id, ctx);
        }
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        metrics::gauge!(m::ROOMS_OPEN).decrement(1.0);
    }
}

impl Handler<PostMessage> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: PostMessage, _ctx: &mut Self::Context) {
        if !self.check_member(&msg.user, &msg.reply) {
            return;
        }
        let ts = now_ms();
        let stored = self.state.append(random_id("m"), &msg.user, msg.text, ts);
        metrics::counter!(m::MESSAGES_TOTAL).increment(1);
        // Stored first, then acknowledged: an ack always means `history` has it.
        msg.reply.push_frame(
            &ServerFrame::Ack {
                client_msg_id: msg.client_msg_id,
                room_id: stored.room_id.clone(),
                seq: stored.seq,
                msg_id: stored.msg_id.clone(),
            },
            Class::Essential,
        );
        let frame = ServerFrame::Message((*stored).clone());
        self.fan_out(&frame, None, Class::Essential);
    }
}

impl Handler<RelayEvent> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: RelayEvent, _ctx: &mut Self::Context) {
        if !self.check_member(&msg.user, &msg.reply) {
            return;
        }
        let room_id = self.state.id.to_string();
        let user_id = msg.user.to_string();
        match msg.event {
            Relay::Typing { active } => {
                let f = ServerFrame::Typing { room_id, user_id, active };
                self.fan_out(&f, Some(&msg.user), Class::Droppable);
            }
            Relay::Read { seq } => {
                let f = ServerFrame::Read { room_id, user_id, seq: seq.min(self.state.last_seq) };
                self.fan_out(&f, Some(&msg.user), Class::Essential);
            }
            Relay::Signal { payload, to } => {
                let f = ServerFrame::Signal { room_id, from: user_id, payload };
                match to {
                    None => self.fan_out(&f, Some(&msg.user), Class::Essential),
                    Some(to) => match self.state.member(&to) {
                        Some(member) if to != msg.user => {
                            if let Some(out) = &member.outbox {
                                out.push_frame(&f, Class::Essential);
                            }
                        }
                        _ => error(
                            &msg.reply,
                            ErrorCode::NotInRoom,
                            format!("{to} is not another member of {}", self.state.id),
                        ),
                    },
                }
            }
        }
    }
}

impl Handler<FetchHistory> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: FetchHistory, _ctx: &mut Self::Context) {
        if !self.check_member(&msg.user, &msg.reply) {
            return;
        }
        let messages = self
            .state
            .history_after(msg.after_seq, msg.limit)
            .into_iter()
            .map(HistoryItem::Message)
            .collect();
        msg.reply.push_frame(
            &ServerFrame::History { room_id: self.state.id.to_string(), messages },
            Class::Essential,
        );
    }
}

impl Handler<JoinRoom> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: JoinRoom, _ctx: &mut Self::Context) {
        let j = msg.join;
        if self.closed {
            // Closed while the join was in flight: the supervisor opens a fresh room.
            self.shared.supervisor_bounce(j);
            return;
        }
        let new = self.state.seat(j.user.clone(), j.session_id, Some(j.outbox.clone()));
        if new {
            self.shared.add_membership(&j.user, &self.state.id);
        }
        j.outbox.push_frame(
            &ServerFrame::Joined {
                room_id: self.state.id.to_string(),
                members: self.state.member_ids(),
            },
            Class::Essential,
        );
        if new {
            self.presence(&j.user, PresenceStatus::Online);
        }
    }
}

impl Handler<LeaveRoom> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: LeaveRoom, ctx: &mut Self::Context) {
        if !self.check_member(&msg.user, &msg.reply) {
            return;
        }
        if msg.reason == LeaveReason::Next {
            let ttl = Duration::from_secs(self.shared.config.skip_ttl_secs);
            for other in self.state.members.iter().filter(|o| o.user != msg.user) {
                self.shared.avoid.add(&msg.user, &other.user, ttl);
            }
        }
        if msg.reason == LeaveReason::Leave {
            msg.reply.push_frame(
                &ServerFrame::Left { room_id: self.state.id.to_string() },
                Class::Essential,
            );
        }
        self.remove_member(&msg.user, ctx);
    }
}

impl Handler<MemberOnline> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: MemberOnline, _ctx: &mut Self::Context) {
        let Some(member) = self.state.member_mut(&msg.user) else { return };
        let was_offline = member.outbox.is_none();
        member.session_id = msg.session_id;
        member.outbox = Some(msg.outbox);
        member.offline_since = None;
        if was_offline {
            self.presence(&msg.user, PresenceStatus::Online);
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
        self.close(msg.reason, ctx);
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

    /// Serialize once, queue the same bytes for every online member but `except`.
    fn fan_out(&self, frame: &ServerFrame, except: Option<&UserId>, class: Class) {
        let bytes = Utf8Bytes::from(frame.to_json());
        for member in &self.state.members {
            if Some(&member.user) == except {
                continue;
            }
            if let Some(out) = &member.outbox {
                out.push(bytes.clone(), class);
            }
        }
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
        if member.session_id != session_id
            || member.offline_since.is_some() && member.outbox.is_none()
        {
            return;
        }
        member.outbox = None;
        member.offline_since = Some(std::time::Instant::now());
        self.presence(&user, PresenceStatus::Offline);
        let grace = Duration::from_millis(self.shared.config.reconnect_grace_ms);
        ctx.run_later(grace, move |act, ctx| {
            let still_gone = act
                .state
                .member(&user)
                .is_some_and(|m| m.session_id == session_id && m.outbox.is_none());
            if still_gone {
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
        match self.state.kind {
            RoomKind::Match if self.state.members.len() <= 1 => self.close("partner_left", ctx),
            RoomKind::Public if self.state.members.is_empty() => {
                let grace = Duration::from_millis(self.shared.config.empty_room_grace_ms);
                ctx.run_later(grace, |act, ctx| {
                    if act.state.members.is_empty() {
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
        self.closed = true;
        let f = ServerFrame::RoomClosed {
            room_id: self.state.id.to_string(),
            reason: Some(reason.into()),
        };
        self.fan_out(&f, None, Class::Essential);
        for member in std::mem::take(&mut self.state.members) {
            self.shared.remove_membership(&member.user, &self.state.id);
        }
        let me = ctx.address();
        self.shared.rooms.remove_if(&self.state.id, |_, addr| *addr == me);
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

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
