//! Inbox of a [`super::MatchShard`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Message, Recipient};

use super::pool::Criteria;
use super::shard_core::LocalLink;
pub use super::shard_core::{CancelReason, OfferAnswered, OfferReceived, OfferSettled};
use crate::bridge::{SearchAd, Ticket};
use crate::ids::UserId;
use crate::session::messages::SessionEvent;

/// How a shard reaches the searcher.
#[derive(Debug, Clone)]
pub struct SearchLink {
    pub session_id: u64,
    pub events: Recipient<SessionEvent>,
}

impl LocalLink for SearchLink {
    fn alive(&self) -> bool {
        self.events.connected()
    }
}

/// Session → MatchShard: enter the pool. No reply: the outcome arrives later as a
/// [`SessionEvent`] (`Matched` or `SearchExpired`).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct EnqueueSearch {
    pub ticket: Ticket,
    pub user: UserId,
    pub criteria: Criteria,
    pub joined: Instant,
    pub max_wait: Duration,
    pub link: SearchLink,
    /// A roaming search moved here by another shard (announced by this one).
    pub moved: bool,
}

/// Engine → MatchShard, once at start: every shard, so roaming searches can move
/// between them and cancels can follow.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetPeers(pub Arc<[actix::Addr<super::MatchShard>]>);

/// Session → MatchShard: leave the pool. Reply: whether it was still waiting.
#[derive(Debug, Message)]
#[rtype(result = "CancelOutcome")]
pub struct CancelSearch {
    pub user: UserId,
    pub ticket: Ticket,
    pub reason: CancelReason,
}

/// Reply to [`CancelSearch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, actix::MessageResponse)]
pub enum CancelOutcome {
    /// Removed from the pool; no outcome will follow.
    Cancelled,
    /// Not waiting any more: a match (or expiry) is already on its way; or, if the
    /// pending match falls through, `SessionEvent::SearchCancelled`.
    NotWaiting,
}

/// Bridge → MatchShard: a search on another node, to replicate.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct AddRemoteSearch {
    pub ad: SearchAd,
}

/// Bridge → MatchShard: searches on `node` left the pool.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct RemoveRemoteSearches {
    pub node: Arc<str>,
    pub tickets: Vec<Ticket>,
}

/// Bridge → MatchShard: forget every replica of `node` (it died or left), or of
/// every node (`None`: the store was lost and replicas will be reloaded).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct DropRemoteSearches {
    pub node: Option<Arc<str>>,
}

/// Bridge → MatchShard: re-announce every local search (after a reconnect).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct RepublishSearches;

/// Bridge → MatchShard (member node): the creator claimed these local searches.
impl Message for OfferReceived {
    type Result = ();
}

/// Bridge → MatchShard (creator): a member node's answer to an offer.
impl Message for OfferAnswered {
    type Result = ();
}

/// Bridge → MatchShard (member node): the offer's room exists, or the match fell
/// through and the held searches go back to the pool.
impl Message for OfferSettled {
    type Result = ();
}

/// Housekeeping → any actor: answered at once; the round trip measures how long
/// a message waits in the actor's mailbox.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Probe;
