//! The inbound router: where events from other nodes go (pool shards: replicas and
//! offers; room replicas; sessions: kicks; moderation: bans, blocks, reports). It implements the bridge's
//! [`ClusterSink`], so any bridge hands it what it hears without knowing the
//! engine. Runs on the bridge's task, so it only routes (`do_send`, directory
//! look-ups) and never waits.
//!
//! The engine owns the router ([`Engine`](crate::Engine) keeps the `Arc`); the
//! bridge holds it weakly. The router holds the shared state and the shards, not
//! the `Engine`, so nothing here points back at itself.

use std::sync::{Arc, Weak};
use std::time::Duration;

use actix::Addr;
use rendezvous_protocol::close;

use crate::bridge::{
    Attachment, BridgeSettings, ClusterEvent, ClusterSink, Held, RoomSnapshot, StoredKind,
};
use crate::ids::{Interest, RoomId, UserId};
use crate::matching::messages::*;
use crate::matching::{shard_for, MatchShard};
use crate::metrics as m;
use crate::rooms::messages::{NodeLost, ResyncRoom, RoomInbound, RoomSubscribed};
use crate::rooms::Rooms;
use crate::state::Shared;

/// Routes what the bridge hears to the actors of this node.
pub struct Inbound {
    shared: Arc<Shared>,
    shards: Arc<[Addr<MatchShard>]>,
    rooms: Rooms,
}

impl Inbound {
    /// Make the router and hand it to the engine's bridge, which starts its work on
    /// the first worker. The caller keeps the returned `Arc` (the bridge's is weak).
    pub fn install(
        shared: &Arc<Shared>,
        shards: &Arc<[Addr<MatchShard>]>,
        rooms: &Rooms,
    ) -> Arc<Inbound> {
        let inbound = Arc::new(Inbound {
            shared: shared.clone(),
            shards: shards.clone(),
            rooms: rooms.clone(),
        });
        match shared.workers.first() {
            Some(worker) => {
                let sink: Weak<dyn ClusterSink> = Arc::downgrade(&inbound) as Weak<dyn ClusterSink>;
                shared.bridge.clone().attach(Attachment {
                    sink,
                    worker: worker.clone(),
                    settings: BridgeSettings::from(&shared.config),
                });
            }
            None => tracing::warn!("the engine has no worker arbiter; the bridge is not started"),
        }
        inbound
    }

    fn shard(&self, language: &str) -> &Addr<MatchShard> {
        shard_for(&self.shards, language)
    }
}

impl ClusterSink for Inbound {
    fn deliver(&self, ev: ClusterEvent) {
        metrics::counter!(m::BRIDGE_RECEIVED_TOTAL, "kind" => ev.kind()).increment(1);
        let shared = &self.shared;
        let me = shared.bridge.node_id();
        match ev {
            ClusterEvent::PoolAdd { ad } => {
                if ad.node != me {
                    self.shard(&ad.language).do_send(AddRemoteSearch { ad });
                }
            }
            ClusterEvent::PoolRemove { node, language, tickets } => {
                if node != me {
                    self.shard(&language)
                        .do_send(RemoveRemoteSearches { node: Arc::from(node), tickets });
                }
            }
            ClusterEvent::NodeBye { node } => {
                if node != me {
                    self.node_lost(&node);
                }
            }
            ClusterEvent::Avoid { a, b, ttl_ms } => {
                shared.avoid.add(&UserId::from(a), &UserId::from(b), Duration::from_millis(ttl_ms));
            }
            ClusterEvent::Beat { .. } => {}
            ClusterEvent::Offer { creator, offer, language, members } => {
                let shard = self.shard(&language).clone();
                shard.do_send(OfferReceived {
                    creator: Arc::from(creator),
                    offer,
                    language,
                    members,
                });
            }
            ClusterEvent::OfferReply { from, offer, language, ok, gone } => {
                self.shard(&language).do_send(OfferAnswered {
                    from: Arc::from(from),
                    offer,
                    ok,
                    gone: gone.into_iter().map(UserId::from).collect(),
                });
            }
            ClusterEvent::OfferConfirm {
                creator,
                offer,
                language,
                room,
                members,
                shared: interests,
            } => {
                let room_id = RoomId::from(room);
                let members: Vec<(UserId, Arc<str>)> =
                    members.into_iter().map(|(u, n)| (UserId::from(u), Arc::from(n))).collect();
                let snapshot =
                    RoomSnapshot { kind: StoredKind::Match, last_seq: 0, members: members.clone() };
                // The replica exists before the members hear of the room (and post).
                self.rooms.open_replica(&room_id, &snapshot, None);
                let interests = interests.into_iter().map(Interest::from).collect();
                self.shard(&language).do_send(OfferSettled {
                    creator: Arc::from(creator),
                    offer,
                    room: Some((room_id, members, interests)),
                });
            }
            ClusterEvent::OfferAbort { creator, offer, language } => {
                self.shard(&language).do_send(OfferSettled {
                    creator: Arc::from(creator),
                    offer,
                    room: None,
                });
            }
            ClusterEvent::Kick { user, node } => {
                if node != me {
                    if let Some(entry) = shared.registry.get(&user) {
                        entry.outbox.close(close::REPLACED);
                    }
                }
            }
            ClusterEvent::Room { room, origin, ev } => {
                if let Some(addr) = self.rooms.directory.get(room.as_str()) {
                    addr.do_send(RoomInbound { origin: Arc::from(origin), ev });
                }
            }
            ClusterEvent::Moderation { origin, ev } => {
                // This node's own changes were applied and carried out when made.
                if origin != me {
                    shared.moderation.apply(&ev);
                    crate::admin::enforce(shared, &self.rooms, &ev);
                }
            }
        }
    }

    /// `node` died or left: forget its searches, start the grace of its room members.
    fn node_lost(&self, node: &str) {
        let node: Arc<str> = Arc::from(node);
        for shard in self.shards.iter() {
            shard.do_send(DropRemoteSearches { node: Some(node.clone()) });
        }
        for room in self.rooms.directory.handles() {
            room.do_send(NodeLost { node: node.clone() });
        }
    }

    /// After a reconnect: drop every replica (they are reloaded from the store) and
    /// announce every local search again.
    fn reconnected(&self) {
        for shard in self.shards.iter() {
            shard.do_send(DropRemoteSearches { node: None });
            shard.do_send(RepublishSearches);
        }
    }

    /// After a reconnect: every room replica restores and catches up.
    fn resync_rooms(&self) {
        for room in self.rooms.directory.handles() {
            room.do_send(ResyncRoom);
        }
    }

    fn room_subscribed(&self, room: &RoomId, store_seq: u64) {
        if let Some(addr) = self.rooms.directory.get(room.as_str()) {
            addr.do_send(RoomSubscribed { store_seq });
        }
    }

    fn held(&self) -> Held {
        let shared = &self.shared;
        Held {
            rooms: self.rooms.directory.ids(),
            sessions: shared.registry.users(),
            seated: shared.memberships.iter().map(|e| e.key().clone()).collect(),
        }
    }
}
