//! The `rendezvous` server: configuration, authentication, the HTTP/WebSocket
//! front door and the run loop around the engine in `rendezvous-actors`.
//!
//! # Layout
//! * [`config`]: every server setting declared once ([`config::Config`], the engine's in
//!   `rendezvous_actors::EngineConfig`); flags over environment over TOML over defaults,
//!   and `--print-config`.
//! * [`server`]: [`server::run`], the accept loop and the graceful drain. The binary
//!   and the tests both call it.
//! * [`http`]: `/ws` upgrade and the HTTP endpoints on the same port.
//! * [`front`]: admission before the upgrade: pending-connection caps, handshake
//!   and idle deadlines, the client address behind trusted proxies.
//! * [`admin`]: the admin API and page on `--admin-bind` (token required).
//! * [`auth`]: JWT and anonymous identities; [`public_key`]: the PEM key of
//!   `--jwt-public-key`.
//! * [`telemetry`]: logging and the Prometheus recorder.
//! * [`shutdown`]: the SIGTERM/SIGINT future.

pub mod admin;
pub mod auth;
pub mod config;
pub mod front;
pub mod http;
pub mod public_key;
pub mod server;
pub mod shutdown;
pub mod telemetry;

pub use config::Config;
pub use server::run;
