//! The bridge between nodes: the facts that must agree across every node of a
//! cluster, behind one trait so that sessions, pools and rooms never know whether
//! they run alone or in a cluster.
//!
//! * [`memory::MemoryBridge`]: the embedded single-node default. Every fact lives in
//!   this process.
//! * A Redis implementation (its own module, added with the cluster work) keeps the
//!   same guarantees across nodes with Lua scripts and pub/sub.
//!
//! Guarantees every implementation must give (the contract the tests check):
//! * **One search per user.** [`Bridge::begin_search`] makes `ticket` the user's
//!   only valid search; any earlier ticket of that user stops being claimable.
//! * **At most one match per search.** [`Bridge::claim_match`] succeeds only if every
//!   member's ticket is still their valid search, and then ends all of them in one
//!   atomic step. Two claims that share a ticket can never both succeed.
//! * **Trending** counts each interest once per successful match.

pub mod memory;

use std::future::Future;
use std::pin::Pin;

use crate::ids::{Interest, UserId};

/// A search ticket: unique per node and increasing with arrival time, so ordering by
/// ticket is ordering by wait ("ties go to the longest wait").
pub type Ticket = u64;

/// Boxed future returned by bridge calls, so actors can `into_actor` it.
pub type BoxFut<T> = Pin<Box<dyn Future<Output = Result<T, BridgeError>> + Send + 'static>>;

/// Why a bridge call failed. Every variant is recoverable: the engine keeps serving
/// local users and retries.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BridgeError {
    /// The shared store cannot be reached now.
    #[error("bridge unavailable: {0}")]
    Unavailable(String),
}

/// Result of [`Bridge::claim_match`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// Every member's search ended in this match.
    Claimed,
    /// These members' tickets were no longer valid; nothing was changed.
    Lost(Vec<UserId>),
}

/// The cross-node facts. Methods take owned arguments and return `'static` futures so
/// an actor can spawn them into its context.
pub trait Bridge: Send + Sync + 'static {
    /// Name of this node.
    fn node_id(&self) -> &str;
    /// Make `ticket` the user's one valid search, superseding any other.
    fn begin_search(&self, user: &UserId, ticket: Ticket);
    /// End the user's search if `ticket` is still the valid one (cancel, timeout).
    fn end_search(&self, user: &UserId, ticket: Ticket);
    /// Atomically end every member's search if all are still valid.
    fn claim_match(&self, members: Vec<(UserId, Ticket)>) -> BoxFut<ClaimOutcome>;
    /// Count the shared interests of a successful match.
    fn record_match(&self, interests: Vec<Interest>);
    /// Most counted interests, highest first.
    fn trending(&self, limit: usize) -> BoxFut<Vec<(String, u64)>>;
    /// Live nodes in the cluster (1 for the embedded bridge).
    fn nodes(&self) -> BoxFut<usize>;
    /// Ok when the shared store is reachable; drives `/readyz`.
    fn health(&self) -> BoxFut<()>;
}
