//! A room's [`Replication`]: alone on this node, or this node's replica of a
//! cluster room with its [`ReplicaOrder`]. The types only; what a room does with
//! each is in `replica.rs`.

use super::ordering::{Effect, ReplicaOrder};
use crate::outbox::Outbox;

/// How a room stores its messages and reaches other nodes.
pub enum Replication {
    /// The room lives on this node only: it assigns `seq` and keeps the history.
    Local,
    /// This node's replica of a cluster room: the store assigns `seq`.
    Cluster(Box<Replica>),
}

/// A cluster replica's ordering, with a buffer for its effects (reused, so a
/// message costs no allocation for them).
pub struct Replica {
    pub(super) order: ReplicaOrder<Sender>,
    pub(super) effects: Vec<Effect<Sender>>,
}

impl Replication {
    /// A replica at `last_seq`; see [`ReplicaOrder::new`] for `loaded`.
    pub fn cluster(last_seq: u64, loaded: bool) -> Self {
        Self::Cluster(Box::new(Replica {
            order: ReplicaOrder::new(last_seq, loaded),
            effects: Vec::new(),
        }))
    }

    pub(super) fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}

/// Who sent a message, for its `ack` (or refusal).
#[derive(Debug)]
pub struct Sender {
    pub user: crate::ids::UserId,
    pub reply: Outbox,
    pub client_msg_id: Option<String>,
}
