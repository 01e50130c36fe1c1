//! The Rendezvous engine: actors that match strangers and carry their chat.
//!
//! # Who owns what
//! ```text
//!  socket ─read─► SessionActor ──EnqueueSearch/CancelSearch──► MatchShard (one per core,
//!  (one per user)   │   │                                       by language; pool.rs rules)
//!                   │   │                                            │ claim via Bridge
//!                   │   │                                            ▼
//!                   │   └──Post/Relay/History/Leave──► RoomActor ◄── RoomSupervisor
//!                   │                                  (seq, history)   (opens rooms, tells
//!                   ▼                                       │            members Matched)
//!          Outbox (bounded queue) ◄────── fan-out ─────────┘
//!                   │
//!           writer task ─write─► socket
//! ```
//! * Sessions, rooms and shards run on the worker arbiters (one thread per core).
//! * [`registry::Registry`] maps users to live sessions; rooms cache members'
//!   outboxes, so fan-out is a `try_send` per member with no actor hop.
//! * [`bridge::Bridge`] holds the facts nodes must agree on (one search per user,
//!   at most one match per search, trending). [`bridge::memory`] is the embedded
//!   single-node default.
//!
//! # Layout
//! * [`config`]: every limit and timer, with defaults.
//! * [`session`]: the per-connection actor, input validation.
//! * [`matching`]: pool shards; [`matching::pool`] is the pure matching core.
//! * [`rooms`]: supervisor, room actor, [`rooms::room`] the pure room state.
//! * [`outbox`]: bounded outbound queue and the socket writer.
//! * [`engine`]: shared state and start-up.
//! * [`budget`]: the per-user byte budget of actions (pure core + shared handle).
//! * [`language`]: language tags and the bounded set of per-language series.
//! * [`avoid`]: skipped and blocked pairs, capped per user.

pub mod avoid;
pub mod bridge;
pub mod budget;
pub mod clock;
pub mod config;
pub mod directory;
pub mod engine;
pub mod error;
pub mod ids;
pub mod language;
pub mod matching;
pub mod metrics;
pub mod outbox;
pub mod registry;
pub mod rooms;
pub mod session;
pub mod state;
pub mod token;

pub use config::{EngineConfig, LadderStep};
pub use engine::Engine;
pub use rendezvous_protocol as protocol;
