//! Rooms. [`Rooms`] is the handle the rest of the engine holds: the room directory
//! (room id → [`actor::RoomActor`], a [`Directory`]) and the [`RoomSupervisor`]'s
//! address. Every room starts through one path, [`Rooms::open`]: a match room on
//! the node that created the match, a public room on its first join, and a cluster
//! replica from the store's snapshot (for the inbound router and for a session's
//! welcome). A room is placed on the worker arbiter most of its members' sessions
//! run on ([`Shared::worker_near`]), so most posts and deliveries stay on one
//! thread. Each room closes itself (match room down to one member, public room
//! empty for a grace period) and removes itself from the directory.
//!
//! The supervisor is also the one path that announces a match (`match_found`):
//! for a room it opens, and for a room another node opened ([`MatchSettled`]).
//!
//! Who talks to whom:
//! ```text
//! MatchShard ──CreateMatchRoom──► RoomSupervisor ──open──► RoomActor
//! MatchShard ──MatchSettled─────►      │  └──Matched + match_found──► members
//! Session ──JoinPublicRoom──► RoomSupervisor ──JoinRoom──► RoomActor
//! Session ──Post/Relay/History/Leave/Online/Offline/Close──► RoomActor (via directory)
//! RoomActor ──frames──► members' Outboxes (never through the session actor)
//! RoomActor ──JoinPublicRoom (a join that raced its close)──► RoomSupervisor
//! ```

pub mod actor;
pub mod dedup;
pub mod messages;
pub mod ordering;
mod replica;
mod replication;
pub mod replies;
pub mod room;

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix::{Actor, Addr, ArbiterHandle, AsyncContext, Context, Handler, Recipient};
use rendezvous_protocol::ServerFrame;

use self::actor::{RoomActor, RoomLinks};
use self::messages::*;
use self::replies::refuse_join;
use self::room::{RoomKind, RoomState};
use crate::bridge::events::ClusterEvent;
use crate::bridge::{RoomSnapshot, StoredKind};
use crate::directory::{Directory, Opened};
use crate::ids::{Interest, RoomId, UserId};
use crate::outbox::{Class, Outbox};
use crate::session::messages::SessionEvent;
use crate::state::Shared;

/// Room id → the room actor open on this node.
pub type RoomDirectory = Directory<Addr<RoomActor>>;

/// The rooms of this node: the directory sessions and the inbound router look rooms
/// up in, and the supervisor that opens them. Cheap to clone.
#[derive(Clone)]
pub struct Rooms {
    shared: Arc<Shared>,
    pub directory: Arc<RoomDirectory>,
    pub supervisor: Addr<RoomSupervisor>,
}

/// How a room begins: its state (seats taken), whether it is a cluster replica and
/// already knows the room's `seq`, and the worker it runs on.
struct Plan {
    state: RoomState,
    clustered: bool,
    loaded: bool,
    worker: ArbiterHandle,
}

/// A room registered in the directory whose actor has not started yet: what is sent
/// to it meanwhile waits in its mailbox. [`Unstarted::start`] starts it.
#[must_use = "a room that is never started never answers"]
struct Unstarted {
    plan: Plan,
    rx: actix::dev::channel::AddressReceiver<RoomActor>,
    shared: Arc<Shared>,
    directory: Arc<RoomDirectory>,
    bounce: Recipient<JoinPublicRoom>,
}

impl Unstarted {
    fn start(self) {
        let Unstarted { plan, rx, shared, directory, bounce } = self;
        let Plan { state, clustered, loaded, worker } = plan;
        worker.spawn_fn(move || {
            let links = RoomLinks { directory, bounce };
            // A fresh match room starts at seq 0: a replica of it is loaded at once;
            // a public replica opened by a join learns its seq from the join's answer.
            let room = if clustered {
                let loaded = loaded || state.kind == RoomKind::Match;
                RoomActor::replica(state, shared, loaded, links)
            } else {
                RoomActor::local(state, shared, links)
            };
            let ctx = Context::with_receiver(rx);
            actix_rt::spawn(ctx.into_future(room));
        });
    }
}

impl Rooms {
    /// Start the room supervisor (on the current arbiter) over an empty directory.
    pub fn start(shared: Arc<Shared>) -> Rooms {
        let directory = Arc::new(RoomDirectory::default());
        let supervisor = RoomSupervisor::create(|ctx| RoomSupervisor {
            rooms: Rooms {
                shared: shared.clone(),
                directory: directory.clone(),
                supervisor: ctx.address(),
            },
        });
        Rooms { shared, directory, supervisor }
    }

    /// The one path that starts a room. Unless a room `id` is open already (then
    /// that one), `plan` says how it begins (or refuses, and nothing opens); the
    /// room's address is registered in the directory at once and a public room is
    /// counted in `public_rooms`, in one step under the room's directory entry. The
    /// actor starts when the caller says ([`Unstarted::start`]): a match room only
    /// after every member's `match_found` is queued, so no member can read a message
    /// of the room before learning of it.
    fn open<E>(
        &self,
        id: &RoomId,
        plan: impl FnOnce() -> Result<Plan, E>,
    ) -> Result<Opened<Addr<RoomActor>, Unstarted>, E> {
        self.directory.get_or_try_open(id, || {
            let plan = plan()?;
            if plan.state.kind == RoomKind::Public {
                self.shared.public_rooms.fetch_add(1, Ordering::Relaxed);
            }
            let (tx, rx) = actix::dev::channel::channel(16);
            let unstarted = Unstarted {
                plan,
                rx,
                shared: self.shared.clone(),
                directory: self.directory.clone(),
                bounce: self.supervisor.clone().recipient(),
            };
            Ok((Addr::new(tx), unstarted))
        })
    }

    /// Open this node's replica of a cluster room, unless one is open already.
    /// Callable from any thread (the inbound router, sessions). Members of this node
    /// are seated with their live session's outbox, except `arriving` (the user whose
    /// new session opens it, and takes its seat after sending `welcome`). Counted, never refused: the room
    /// exists in the cluster already.
    pub fn open_replica(
        &self,
        room_id: &RoomId,
        snapshot: &RoomSnapshot,
        arriving: Option<&UserId>,
    ) -> Addr<RoomActor> {
        let shared = &self.shared;
        let plan = || {
            let me = shared.bridge.node_id();
            let kind = match snapshot.kind {
                StoredKind::Match => RoomKind::Match,
                StoredKind::Public => RoomKind::Public,
            };
            let mut state = new_state(shared, room_id.clone(), kind);
            state.last_seq = snapshot.last_seq;
            for (user, node) in &snapshot.members {
                if &**node == me {
                    // The arriving user's session has not sent `welcome` yet: its
                    // seat gets the outbox with `MemberOnline`, after the welcome,
                    // so no room frame can overtake it.
                    let live =
                        shared.registry.get(user.as_str()).filter(|_| Some(user) != arriving);
                    let session = live.as_ref().map(|e| e.session_id).unwrap_or(0);
                    state.seat(user.clone(), session, live.map(|e| e.outbox));
                    shared.add_membership(user, room_id);
                } else {
                    state.seat_remote(user.clone(), node.clone());
                }
            }
            let here = snapshot.members.iter().filter(|(_, n)| &**n == me);
            let worker = shared.worker_near(here.map(|(u, _)| u.as_str()));
            // The snapshot carries the room's `seq`: the replica is loaded.
            Ok::<_, Infallible>(Plan { state, clustered: true, loaded: true, worker })
        };
        match self.open(room_id, plan) {
            Ok(Opened::Existing(addr)) => addr,
            Ok(Opened::New(addr, unstarted)) => {
                unstarted.start();
                addr
            }
            Err(never) => match never {},
        }
    }
}

/// Opens rooms and announces matches. A single actor, so that opening a public room
/// on first join is checked against the cap and counted in one place.
pub struct RoomSupervisor {
    rooms: Rooms,
}

impl RoomSupervisor {
    /// The outbox of `member`'s session if it is still the one that searched. Looked
    /// up once per member and match: it seats the member and carries `match_found`.
    fn live_outbox(&self, member: &MatchedMember) -> Option<Outbox> {
        let entry = self.rooms.shared.registry.get(member.user.as_str())?;
        (entry.session_id == member.session_id).then_some(entry.outbox)
    }
}

impl Actor for RoomSupervisor {
    type Context = Context<Self>;
}

impl Handler<CreateMatchRoom> for RoomSupervisor {
    type Result = ();

    fn handle(&mut self, msg: CreateMatchRoom, _ctx: &mut Self::Context) {
        let shared = self.rooms.shared.clone();
        let room_id = msg.room_id;
        let clustered = shared.bridge.clustered();
        let me: Arc<str> = Arc::from(shared.bridge.node_id());
        let outboxes: Vec<Option<Outbox>> =
            msg.members.iter().map(|m| self.live_outbox(m)).collect();
        let mut state = new_state(&shared, room_id.clone(), RoomKind::Match);
        for (member, outbox) in msg.members.iter().zip(&outboxes) {
            state.seat(member.user.clone(), member.session_id, outbox.clone());
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
            shared.bridge.room_open(&room_id, StoredKind::Match, all.clone());
        }
        // A creator none of whose members is here keeps no replica: its channel
        // never carries the room's messages (only member nodes hear them), so a
        // replica here would fall behind at once, and a member who reconnected to
        // this node later would find it instead of opening a fresh one from the
        // store (and read an empty history).
        let replica = !clustered || !msg.members.is_empty();
        // Memberships and directory first, so the room is reachable before anyone
        // learns its id.
        for member in &msg.members {
            shared.add_membership(&member.user, &room_id);
        }
        let unstarted = if replica {
            let plan = || {
                let worker = shared.worker_near(msg.members.iter().map(|m| m.user.as_str()));
                Ok::<_, Infallible>(Plan { state, clustered, loaded: false, worker })
            };
            match self.rooms.open(&room_id, plan) {
                Ok(Opened::New(_, unstarted)) => Some(unstarted),
                // A fresh random id: never open already.
                Ok(Opened::Existing(_)) => None,
                Err(never) => match never {},
            }
        } else {
            None
        };
        let members: Vec<_> = all.iter().map(|(u, _)| u.clone()).collect();
        if let Some(OfferConfirmation { creator, offer, language, nodes }) = msg.confirm {
            let wire: Vec<(String, String)> =
                all.iter().map(|(u, n)| (u.to_string(), n.to_string())).collect();
            let interests: Vec<String> = msg.shared.iter().map(|i| i.to_string()).collect();
            for node in nodes {
                shared.bridge.send_to_node(
                    &node,
                    ClusterEvent::OfferConfirm {
                        creator: creator.to_string(),
                        offer,
                        language: language.clone(),
                        room: room_id.to_string(),
                        members: wire.clone(),
                        shared: interests.clone(),
                    },
                );
            }
        }
        for (member, outbox) in msg.members.iter().zip(&outboxes) {
            announce_match(member, outbox.as_ref(), &room_id, &members, &msg.shared);
        }
        if let Some(unstarted) = unstarted {
            unstarted.start();
        }
    }
}

impl Handler<JoinPublicRoom> for RoomSupervisor {
    type Result = ();

    fn handle(&mut self, msg: JoinPublicRoom, _ctx: &mut Self::Context) {
        let shared = &self.rooms.shared;
        let plan = || {
            // Checked here, and counted by `open` in the same step.
            let max = shared.config.max_public_rooms;
            if shared.public_rooms.load(Ordering::Relaxed) >= max {
                return Err(max);
            }
            let state = new_state(shared, msg.room_id.clone(), RoomKind::Public);
            // A cluster replica learns the room's `seq` from its first join.
            let clustered = shared.bridge.clustered();
            // Beside its first member; later joiners land where they land.
            let worker = shared.worker_near([msg.user.as_str()]);
            Ok(Plan { state, clustered, loaded: false, worker })
        };
        match self.rooms.open(&msg.room_id, plan) {
            Ok(Opened::Existing(addr)) => addr.do_send(JoinRoom { join: msg }),
            Ok(Opened::New(addr, unstarted)) => {
                unstarted.start();
                addr.do_send(JoinRoom { join: msg });
            }
            Err(max) => refuse_join(
                shared,
                &msg,
                format!(
                    "this server holds its most public rooms ({max}); join an open one or \
                     try later"
                ),
            ),
        }
    }
}

impl Handler<MatchSettled> for RoomSupervisor {
    type Result = ();

    fn handle(&mut self, msg: MatchSettled, _ctx: &mut Self::Context) {
        if self.rooms.shared.bridge.clustered() {
            // Opened already when the creator's confirm came; not when the offer was
            // settled by its recorded outcome because the confirm was lost. Either
            // way the replica exists before the members hear of the room.
            let snapshot =
                RoomSnapshot { kind: StoredKind::Match, last_seq: 0, members: msg.all.clone() };
            self.rooms.open_replica(&msg.room_id, &snapshot, None);
        }
        let all: Vec<UserId> = msg.all.iter().map(|(u, _)| u.clone()).collect();
        for member in &msg.members {
            let outbox = self.live_outbox(member);
            announce_match(member, outbox.as_ref(), &msg.room_id, &all, &msg.shared);
        }
    }
}

impl Handler<crate::matching::messages::Probe> for RoomSupervisor {
    type Result = ();

    fn handle(&mut self, _msg: crate::matching::messages::Probe, _ctx: &mut Self::Context) {}
}

/// Tell a member on this node that its search ended in `room_id`: the session actor
/// learns it (search over) and, right after, `match_found` is queued straight on
/// the session's outbox (`None`: the session that searched is gone). Straight, not
/// through the actor: the other members may post to the room as soon as they read
/// their own `match_found`, and the room writes to this outbox directly; were
/// `match_found` still waiting in the actor's mailbox, a member could read a
/// message of a room it has not heard of yet.
fn announce_match(
    member: &MatchedMember,
    outbox: Option<&Outbox>,
    room_id: &RoomId,
    members: &[UserId],
    interests: &[Interest],
) {
    member.events.do_send(SessionEvent::Matched { ticket: member.ticket });
    let Some(outbox) = outbox else { return };
    let partner_id = match members {
        [a, b] => Some(if *a == member.user { b } else { a }.to_string()),
        _ => None,
    };
    outbox.push_frame(
        &ServerFrame::MatchFound {
            room_id: room_id.to_string(),
            partner_id,
            members: members.iter().map(|u| u.to_string()).collect(),
            shared_interests: interests.iter().map(|i| i.to_string()).collect(),
            score: interests.len() as u32,
        },
        Class::Essential,
    );
}

/// A fresh room's state with the configured history bounds.
fn new_state(shared: &Shared, id: RoomId, kind: RoomKind) -> RoomState {
    RoomState::new(id, kind, shared.config.history_len, shared.config.history_bytes)
        .remembering_ids(shared.config.dedup_window_ms, shared.config.dedup_max_per_room)
}

#[cfg(test)]
mod tests {
    use actix::{Arbiter, Context as ActorContext};
    use tokio::sync::mpsc;

    use super::*;
    use crate::budget::Budget;
    use crate::config::EngineConfig;
    use crate::outbox::OutboxReceiver;
    use crate::registry::SessionEntry;

    /// Stands in for a session actor: forwards what it is told.
    struct Listener(mpsc::UnboundedSender<SessionEvent>);

    impl Actor for Listener {
        type Context = ActorContext<Self>;
    }

    impl Handler<SessionEvent> for Listener {
        type Result = ();

        fn handle(&mut self, msg: SessionEvent, _ctx: &mut Self::Context) {
            let _ = self.0.send(msg);
        }
    }

    fn rooms(max_public_rooms: usize) -> Rooms {
        let config = EngineConfig { max_public_rooms, ..EngineConfig::default() };
        let bridge = Arc::new(crate::bridge::memory::MemoryBridge::new("n1"));
        Rooms::start(Arc::new(Shared::new(config, bridge, vec![Arbiter::current()])))
    }

    fn join(room: &str, user: &str) -> (JoinPublicRoom, Outbox, OutboxReceiver) {
        let (outbox, rx) = Outbox::new(16, 1 << 20);
        let join = JoinPublicRoom {
            room_id: RoomId::from(room),
            user: UserId::from(user),
            session_id: 1,
            outbox: outbox.clone(),
            budget: Budget::new(1 << 20, 1 << 20),
        };
        (join, outbox, rx)
    }

    #[test]
    fn every_opener_counts_public_rooms_and_only_a_first_join_is_refused() {
        actix::System::new().block_on(async {
            let rooms = rooms(1);
            let shared = rooms.shared.clone();
            let (first, _, _rx) = join("pub-a", "ann");
            rooms.supervisor.send(first).await.expect("supervisor");
            assert!(rooms.directory.contains("pub-a"));
            assert_eq!(shared.public_rooms.load(Ordering::Relaxed), 1);

            // Over the cap: refused, nothing registered, the reserved seat given back.
            let user = UserId::from("bob");
            let (second, refused, _refused_rx) = join("pub-b", "bob");
            shared.add_membership(&user, &second.room_id);
            rooms.supervisor.send(second).await.expect("supervisor");
            assert!(!rooms.directory.contains("pub-b"));
            assert!(shared.rooms_of(&user).is_empty());
            assert_eq!(refused.queued(), 1, "the refusal is queued for the joiner");

            // A replica exists in the cluster already: counted, never refused, and
            // opened once however often it is asked for.
            let snapshot = RoomSnapshot {
                kind: StoredKind::Public,
                last_seq: 7,
                members: vec![(UserId::from("cy"), Arc::from("n2"))],
            };
            let id = RoomId::from("pub-c");
            let one = rooms.open_replica(&id, &snapshot, None);
            let two = rooms.open_replica(&id, &snapshot, None);
            assert!(one == two);
            assert_eq!(shared.public_rooms.load(Ordering::Relaxed), 2);
        });
    }

    #[test]
    fn a_match_settled_elsewhere_is_announced_to_the_sessions_that_searched() {
        actix::System::new().block_on(async {
            let rooms = rooms(10);
            let (tx, mut rx) = mpsc::unbounded_channel();
            let events = Listener(tx).start().recipient();
            let (live, _live_rx) = Outbox::new(16, 1 << 20);
            let (newer, _newer_rx) = Outbox::new(16, 1 << 20);
            let registry = &rooms.shared.registry;
            let entry = |session_id, outbox: &Outbox| SessionEntry {
                session_id,
                outbox: outbox.clone(),
                events: events.clone(),
                worker: None,
                ip: None,
            };
            registry.insert(UserId::from("ann"), entry(1, &live));
            // Bob searched from session 1; session 2 replaced it since.
            registry.insert(UserId::from("bob"), entry(2, &newer));
            let member = |user: &str, ticket| MatchedMember {
                user: UserId::from(user),
                session_id: 1,
                ticket,
                events: events.clone(),
            };
            let settled = MatchSettled {
                room_id: RoomId::from("r1"),
                members: vec![member("ann", 10), member("bob", 11)],
                all: ["ann", "bob", "cy"]
                    .into_iter()
                    .map(|u| (UserId::from(u), Arc::from("node-b")))
                    .collect(),
                shared: vec![Interest::from("chess")],
            };
            rooms.supervisor.send(settled).await.expect("supervisor");
            let mut told = Vec::new();
            for _ in 0..2 {
                if let Some(SessionEvent::Matched { ticket }) = rx.recv().await {
                    told.push(ticket);
                }
            }
            assert_eq!(told, vec![10, 11], "both searches end");
            assert_eq!(live.queued(), 1, "match_found for the live session");
            assert_eq!(newer.queued(), 0, "nothing for a session that did not search");
        });
    }
}
