//! Where events from other nodes go: pool shards (replicas, offers), room replicas,
//! sessions (kicks). Bridge-neutral: any bridge implementation that receives
//! [`ClusterEvent`]s hands them to [`dispatch`]. Runs on the bridge's task, so it
//! only routes (`do_send`, directory look-ups) and never waits.

use std::sync::Arc;
use std::time::Duration;

use rendezvous_protocol::close;

use super::events::ClusterEvent;
use super::{RoomSnapshot, StoredKind};
use crate::engine::Engine;
use crate::ids::{Interest, RoomId, UserId};
use crate::matching::messages::*;
use crate::metrics as m;
use crate::rooms::messages::{NodeLost, ResyncRoom, RoomInbound};

fn kind(ev: &ClusterEvent) -> &'static str {
    match ev {
        ClusterEvent::PoolAdd { .. } => "pool_add",
        ClusterEvent::PoolRemove { .. } => "pool_remove",
        ClusterEvent::NodeBye { .. } => "node_bye",
        ClusterEvent::Avoid { .. } => "avoid",
        ClusterEvent::Beat { .. } => "beat",
        ClusterEvent::Offer { .. } => "offer",
        ClusterEvent::OfferReply { .. } => "offer_reply",
        ClusterEvent::OfferConfirm { .. } => "offer_confirm",
        ClusterEvent::OfferAbort { .. } => "offer_abort",
        ClusterEvent::Kick { .. } => "kick",
        ClusterEvent::Room { .. } => "room",
    }
}

/// Route one event.
pub fn dispatch(engine: &Engine, ev: ClusterEvent) {
    metrics::counter!(m::BRIDGE_RECEIVED_TOTAL, "kind" => kind(&ev)).increment(1);
    let shared = &engine.shared;
    let me = shared.bridge.node_id();
    match ev {
        ClusterEvent::PoolAdd { ad } => {
            if ad.node != me {
                engine.shard_for(&ad.language).do_send(AddRemoteSearch { ad });
            }
        }
        ClusterEvent::PoolRemove { node, language, tickets } => {
            if node != me {
                engine
                    .shard_for(&language)
                    .do_send(RemoveRemoteSearches { node: Arc::from(node), tickets });
            }
        }
        ClusterEvent::NodeBye { node } => {
            if node != me {
                node_lost(engine, &node);
            }
        }
        ClusterEvent::Avoid { a, b, ttl_ms } => {
            shared.avoid.add(&UserId::from(a), &UserId::from(b), Duration::from_millis(ttl_ms));
        }
        ClusterEvent::Beat { .. } => {}
        ClusterEvent::Offer { creator, offer, language, members } => {
            let shard = engine.shard_for(&language).clone();
            shard.do_send(OfferReceived { creator: Arc::from(creator), offer, language, members });
        }
        ClusterEvent::OfferReply { from, offer, language, ok, gone } => {
            engine.shard_for(&language).do_send(OfferAnswered {
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
            let snapshot = RoomSnapshot {
                kind: StoredKind::Match,
                last_seq: 0,
                members: members
                    .iter()
                    .map(|(u, n)| (UserId::from(u.as_str()), Arc::from(n.as_str())))
                    .collect(),
            };
            // The replica exists before the members hear of the room (and post).
            engine.rooms.open_replica(&room_id, &snapshot);
            let members = members.into_iter().map(|(u, _)| UserId::from(u)).collect();
            let interests = interests.into_iter().map(Interest::from).collect();
            engine.shard_for(&language).do_send(OfferSettled {
                creator: Arc::from(creator),
                offer,
                room: Some((room_id, members, interests)),
            });
        }
        ClusterEvent::OfferAbort { creator, offer, language } => {
            engine.shard_for(&language).do_send(OfferSettled {
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
            if let Some(addr) = engine.rooms.directory.get(room.as_str()) {
                addr.do_send(RoomInbound { origin: Arc::from(origin), ev });
            }
        }
    }
}

/// `node` died or left: forget its searches, start the grace of its room members.
pub fn node_lost(engine: &Engine, node: &str) {
    let node: Arc<str> = Arc::from(node);
    for shard in engine.shards.iter() {
        shard.do_send(DropRemoteSearches { node: Some(node.clone()) });
    }
    for room in engine.rooms.directory.handles() {
        room.do_send(NodeLost { node: node.clone() });
    }
}

/// After a reconnect: drop every replica (they are reloaded from the store) and
/// announce every local search again.
pub fn republish_and_drop_replicas(engine: &Engine) {
    for shard in engine.shards.iter() {
        shard.do_send(DropRemoteSearches { node: None });
        shard.do_send(RepublishSearches);
    }
}

/// After a reconnect: every room replica restores and catches up.
pub fn resync_rooms(engine: &Engine) {
    for room in engine.rooms.directory.handles() {
        room.do_send(ResyncRoom);
    }
}
