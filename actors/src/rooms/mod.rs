//! Rooms. The [`RoomSupervisor`] opens rooms (for claimed matches, and named public
//! rooms on first join) and spreads them over the worker arbiters; each room is a
//! [`actor::RoomActor`] that closes itself (match room down to one member, public
//! room empty for a grace period) and removes itself from the directory.
//!
//! Who talks to whom:
//! ```text
//! MatchShard ──CreateMatchRoom──► RoomSupervisor ──start──► RoomActor
//!                                      │  └──SessionEvent::Matched──► members' sessions
//! Session ──JoinPublicRoom──► RoomSupervisor ──JoinRoom──► RoomActor
//! Session ──Post/Relay/History/Leave/Online/Offline/Close──► RoomActor (via directory)
//! RoomActor ──frames──► members' Outboxes (never through the session actor)
//! ```

pub mod actor;
pub mod messages;
pub mod room;

use std::sync::Arc;

use actix::{Actor, Context, Handler};
use dashmap::mapref::entry::Entry as MapEntry;
use rendezvous_protocol::ServerFrame;

use self::actor::RoomActor;
use self::messages::*;
use self::room::{RoomKind, RoomState};
use crate::engine::Shared;
use crate::ids::{random_id, RoomId};
use crate::metrics as m;
use crate::outbox::Class;
use crate::session::messages::SessionEvent;

/// Opens rooms. Single actor so that creating a public room on first join is
/// decided in one place.
pub struct RoomSupervisor {
    shared: Arc<Shared>,
}

impl RoomSupervisor {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    fn start_room(&self, state: RoomState) -> actix::Addr<RoomActor> {
        let shared = self.shared.clone();
        let worker = self.shared.next_worker();
        RoomActor::start_in_arbiter(&worker, move |_| RoomActor::new(state, shared))
    }
}

impl Actor for RoomSupervisor {
    type Context = Context<Self>;
}

impl Handler<CreateMatchRoom> for RoomSupervisor {
    type Result = ();

    fn handle(&mut self, msg: CreateMatchRoom, _ctx: &mut Self::Context) {
        let room_id = RoomId::from(random_id("r"));
        let mut state =
            RoomState::new(room_id.clone(), RoomKind::Match, self.shared.config.history_len);
        for member in &msg.members {
            let outbox = self
                .shared
                .registry
                .get(member.user.as_str())
                .filter(|e| e.session_id == member.session_id)
                .map(|e| e.outbox);
            state.seat(member.user.clone(), member.session_id, outbox);
        }
        // Directory and memberships first, so the room is reachable before anyone
        // learns its id.
        for member in &msg.members {
            self.shared.add_membership(&member.user, &room_id);
        }
        let addr = self.start_room(state);
        self.shared.rooms.insert(room_id.clone(), addr);
        let members: Vec<_> = msg.members.iter().map(|mm| mm.user.clone()).collect();
        for member in &msg.members {
            member.events.do_send(SessionEvent::Matched {
                ticket: member.ticket,
                room_id: room_id.clone(),
                members: members.clone(),
                shared: msg.shared.clone(),
            });
        }
    }
}

impl Handler<JoinPublicRoom> for RoomSupervisor {
    type Result = ();

    fn handle(&mut self, msg: JoinPublicRoom, _ctx: &mut Self::Context) {
        match self.shared.rooms.entry(msg.room_id.clone()) {
            MapEntry::Occupied(e) => e.get().do_send(JoinRoom { join: msg }),
            MapEntry::Vacant(v) => {
                let state = RoomState::new(
                    msg.room_id.clone(),
                    RoomKind::Public,
                    self.shared.config.history_len,
                );
                let addr = self.start_room(state);
                addr.do_send(JoinRoom { join: msg });
                v.insert(addr);
            }
        }
    }
}

/// Tell one outbox about a closed room it still thought it was in.
pub fn room_gone(reply: &crate::outbox::Outbox, room_id: &RoomId) {
    metrics::counter!(m::ERRORS_TOTAL, "code" => "not_in_room").increment(1);
    reply.push_frame(
        &ServerFrame::Error {
            code: rendezvous_protocol::ErrorCode::NotInRoom,
            message: format!("not a member of room {room_id}"),
            retry_after_ms: None,
            action: None,
        },
        Class::Essential,
    );
}
