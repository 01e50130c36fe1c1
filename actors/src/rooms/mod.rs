//! Rooms. The [`RoomSupervisor`] opens rooms (for claimed matches, and named public
//! rooms on first join) on the worker arbiter most of their members' sessions run
//! on ([`Shared::worker_near`]), so most posts and deliveries stay on one thread.
//! Each room is a [`actor::RoomActor`] that closes itself (match room down to one
//! member, public room empty for a grace period) and removes itself from the
//! directory.
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
pub mod ordering;
mod replica;
pub mod room;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix::{Actor, Addr, ArbiterHandle, Context, Handler};
use dashmap::mapref::entry::Entry as MapEntry;
use rendezvous_protocol::ServerFrame;

use self::actor::RoomActor;
use self::messages::*;
use self::room::{RoomKind, RoomState};
use crate::bridge::events::ClusterEvent;
use crate::bridge::{RoomSnapshot, StoredKind};
use crate::engine::Shared;
use crate::ids::{RoomId, UserId};
use crate::metrics as m;
use crate::outbox::Class;

/// Opens rooms. Single actor so that creating a public room on first join is
/// decided in one place.
pub struct RoomSupervisor {
    shared: Arc<Shared>,
}

impl RoomSupervisor {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    fn start_room(
        &self,
        state: RoomState,
        clustered: bool,
        worker: ArbiterHandle,
    ) -> actix::Addr<RoomActor> {
        let (addr, start) = self.prepare_room(state, clustered, worker);
        start();
        addr
    }

    /// A room whose address exists at once but whose actor starts on its worker
    /// only when the returned closure runs: what is sent to it meanwhile waits in
    /// its mailbox. A match room starts after every member's `match_found` is
    /// queued, so no member can read a message of the room before learning of it.
    fn prepare_room(
        &self,
        state: RoomState,
        clustered: bool,
        worker: ArbiterHandle,
    ) -> (actix::Addr<RoomActor>, impl FnOnce()) {
        let shared = self.shared.clone();
        let (tx, rx) = actix::dev::channel::channel(16);
        let start = move || {
            worker.spawn_fn(move || {
                let ctx = Context::with_receiver(rx);
                actix_rt::spawn(ctx.into_future(RoomActor::new(state, shared, clustered)));
            });
        };
        (actix::Addr::new(tx), start)
    }
}

impl Actor for RoomSupervisor {
    type Context = Context<Self>;
}

impl Handler<CreateMatchRoom> for RoomSupervisor {
    type Result = ();

    fn handle(&mut self, msg: CreateMatchRoom, _ctx: &mut Self::Context) {
        let room_id = msg.room_id;
        let clustered = self.shared.bridge.clustered();
        let me: Arc<str> = Arc::from(self.shared.bridge.node_id());
        let mut state = new_state(&self.shared, room_id.clone(), RoomKind::Match);
        for member in &msg.members {
            let outbox = self
                .shared
                .registry
                .get(member.user.as_str())
                .filter(|e| e.session_id == member.session_id)
                .map(|e| e.outbox);
            state.seat(member.user.clone(), member.session_id, outbox);
        }
        for (user, node) in &msg.remote {
            state.seat_remote(user.clone(), node.clone());
        }
        let all: Vec<(UserId, Arc<str>)> = msg
            .members
            .iter()
            .map(|mm| (mm.user.clone(), me.clone()))
            .chain(msg.remote.iter().cloned())
            .collect();
        if clustered {
            // Before any member can learn the room id (and post to it).
            self.shared.bridge.room_open(&room_id, StoredKind::Match, all.clone());
        }
        // A creator none of whose members is here keeps no replica: its channel
        // never carries the room's messages (only member nodes hear them), so a
        // replica here would fall behind at once, and a member who reconnected to
        // this node later would find it instead of opening a fresh one from the
        // store (and read an empty history).
        let replica = !clustered || !msg.members.is_empty();
        // Directory and memberships first, so the room is reachable before anyone
        // learns its id.
        for member in &msg.members {
            self.shared.add_membership(&member.user, &room_id);
        }
        let start = replica.then(|| {
            let worker = self.shared.worker_near(msg.members.iter().map(|m| m.user.as_str()));
            let (addr, start) = self.prepare_room(state, clustered, worker);
            self.shared.rooms.insert(room_id.clone(), addr);
            start
        });
        let members: Vec<_> = all.iter().map(|(u, _)| u.clone()).collect();
        if let Some(OfferConfirmation { creator, offer, language, nodes }) = msg.confirm {
            let wire: Vec<(String, String)> =
                all.iter().map(|(u, n)| (u.to_string(), n.to_string())).collect();
            let shared: Vec<String> = msg.shared.iter().map(|i| i.to_string()).collect();
            for node in nodes {
                self.shared.bridge.send_to_node(
                    &node,
                    ClusterEvent::OfferConfirm {
                        creator: creator.to_string(),
                        offer,
                        language: language.clone(),
                        room: room_id.to_string(),
                        members: wire.clone(),
                        shared: shared.clone(),
                    },
                );
            }
        }
        for member in &msg.members {
            crate::session::announce_match(
                &self.shared,
                &member.user,
                member.session_id,
                &member.events,
                member.ticket,
                &room_id,
                &members,
                &msg.shared,
            );
        }
        if let Some(start) = start {
            start();
        }
    }
}

/// Open this node's replica of a cluster room, unless one is open already. Callable
/// from any thread (the bridge's inbound task, sessions). Members of this node are
/// seated with their live session's outbox.
pub fn open_replica(
    shared: &Arc<Shared>,
    room_id: &RoomId,
    snapshot: &RoomSnapshot,
) -> Addr<RoomActor> {
    let me = shared.bridge.node_id();
    match shared.rooms.entry(room_id.clone()) {
        MapEntry::Occupied(e) => e.get().clone(),
        MapEntry::Vacant(v) => {
            let kind = match snapshot.kind {
                StoredKind::Match => RoomKind::Match,
                StoredKind::Public => RoomKind::Public,
            };
            let mut state = new_state(shared, room_id.clone(), kind);
            if kind == RoomKind::Public {
                // Counted, never refused: the room exists in the cluster already.
                shared.public_rooms.fetch_add(1, Ordering::Relaxed);
            }
            state.last_seq = snapshot.last_seq;
            for (user, node) in &snapshot.members {
                if &**node == me {
                    let live = shared.registry.get(user.as_str());
                    let session = live.as_ref().map(|e| e.session_id).unwrap_or(0);
                    state.seat(user.clone(), session, live.map(|e| e.outbox));
                    shared.add_membership(user, room_id);
                } else {
                    state.seat_remote(user.clone(), node.clone());
                }
            }
            let shared2 = shared.clone();
            let worker = shared.worker_near(
                snapshot.members.iter().filter(|(_, n)| &**n == me).map(|(u, _)| u.as_str()),
            );
            let addr = RoomActor::start_in_arbiter(&worker, move |_| {
                // The snapshot carries the room's `seq`: the replica is loaded.
                let mut room = RoomActor::new(state, shared2, true);
                room.mark_loaded();
                room
            });
            v.insert(addr.clone());
            addr
        }
    }
}

impl Handler<JoinPublicRoom> for RoomSupervisor {
    type Result = ();

    fn handle(&mut self, msg: JoinPublicRoom, _ctx: &mut Self::Context) {
        match self.shared.rooms.entry(msg.room_id.clone()) {
            MapEntry::Occupied(e) => e.get().do_send(JoinRoom { join: msg }),
            MapEntry::Vacant(v) => {
                // Checked and counted here, in the one actor that opens public rooms.
                let max = self.shared.config.max_public_rooms;
                if self.shared.public_rooms.load(Ordering::Relaxed) >= max {
                    drop(v);
                    return refuse_join(
                        &self.shared,
                        &msg,
                        format!(
                            "this server holds its most public rooms ({max}); join an open \
                             one or try later"
                        ),
                    );
                }
                self.shared.public_rooms.fetch_add(1, Ordering::Relaxed);
                let state = new_state(&self.shared, msg.room_id.clone(), RoomKind::Public);
                // A cluster replica learns the room's `seq` from its first join.
                let clustered = self.shared.bridge.clustered();
                // Beside its first member; later joiners land where they land.
                let worker = self.shared.worker_near([msg.user.as_str()]);
                let addr = self.start_room(state, clustered, worker);
                addr.do_send(JoinRoom { join: msg });
                v.insert(addr);
            }
        }
    }
}

/// A fresh room's state with the configured history bounds.
fn new_state(shared: &Shared, id: RoomId, kind: RoomKind) -> RoomState {
    RoomState::new(id, kind, shared.config.history_len, shared.config.history_bytes)
}

/// Answer a refused join with `too_large` and give back the seat the session
/// reserved for it ([`Shared::reserve_room`]).
pub fn refuse_join(shared: &Shared, join: &JoinPublicRoom, message: String) {
    shared.remove_membership(&join.user, &join.room_id);
    metrics::counter!(m::ERRORS_TOTAL, "code" => "too_large").increment(1);
    join.outbox.push_frame(
        &ServerFrame::Error {
            code: rendezvous_protocol::ErrorCode::TooLarge,
            message,
            retry_after_ms: None,
            action: Some("join".into()),
        },
        Class::Essential,
    );
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

impl Handler<crate::matching::messages::Probe> for RoomSupervisor {
    type Result = ();

    fn handle(&mut self, _msg: crate::matching::messages::Probe, _ctx: &mut Self::Context) {}
}
