//! The Rendezvous engine: actors that match strangers and carry their chat.
//!
//! # Who owns what
//! ```text
//!  socket ─read─► SessionActor ──EnqueueSearch/CancelSearch──► MatchShard (one per core,
//!  (one per user)  │  │  │                                       by language; pool.rs)
//!                  │  │  │                                            │ claim via Bridge
//!                  │  │  └──JoinPublicRoom──► RoomSupervisor ◄────────┘ CreateMatchRoom,
//!                  │  │                        │  opens every room,      MatchSettled
//!                  │  │        Matched ◄───────┤  announces every match
//!                  │  │                        ▼
//!                  │  └──Post/Relay/History/Leave──► RoomActor (seq, history; records
//!                  │       (found in the directory)    │         a `next` skip)
//!                  ▼                                   │
//!         Outbox (bounded queue) ◄── match_found, fan-out
//!                  │
//!          writer task ─write─► socket
//! ```
//! * Sessions, rooms and shards run on the worker arbiters (one thread per core).
//! * [`state::Shared`] is what they share, and holds no actor: the registry
//!   (user → live session), memberships (user → rooms, the one record), each
//!   user's last search (the one record), avoid list, limiters, the bridge.
//! * [`rooms::Rooms`] is the room directory ([`directory::Directory`] of room
//!   actors) and the supervisor's address; rooms cache members' outboxes, so
//!   fan-out is a `try_send` per member with no actor hop.
//! * [`bridge::Bridge`] holds the facts nodes must agree on (one search per user,
//!   at most one match per search, trending). [`bridge::memory`] is the embedded
//!   single-node default.
//!
//! # Layers (a module imports only those below it)
//! ```text
//!  session/                      the socket's actor; the server starts it with an Engine
//!  engine.rs, inbound.rs         wiring: starts shards and the supervisor, the Engine
//!                                handle; the router the bridge hands cluster events to
//!  matching/                     pool shards (reach rooms through the supervisor's inbox)
//!  rooms/                        supervisor, room actors, pure room state
//!  state.rs                      Shared (no actor addresses)
//!  bridge/                       Bridge trait, in-process and Redis bridges
//!  leaves                        ids, clock, config, outbox, registry, directory, token, ...
//! ```
//!
//! # Layout
//! * [`config`]: every limit and timer, with defaults.
//! * [`state`]: what the actors share; [`engine`]: start-up and the handle.
//! * [`session`]: the per-connection actor, input validation; [`token`]: the
//!   token lifetime and the verifier hook.
//! * [`matching`]: pool shards; [`matching::pool`] is the pure matching core and
//!   [`matching::shard_core`] the pure shard (claims, the cross-node offer protocol,
//!   timeouts) under the thin [`matching::MatchShard`] actor.
//! * [`rooms`]: supervisor, room actor, [`rooms::room`] the pure room state,
//!   [`rooms::ordering`] the pure ordering of a cluster replica;
//!   [`directory`]: the generic room directory.
//! * [`outbox`]: bounded outbound queue and the socket writer.
//! * [`inbound`]: routes what the bridge hears from other nodes to shards, rooms
//!   and sessions (the bridge's [`bridge::ClusterSink`]).
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
pub mod inbound;
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
pub mod ice;
