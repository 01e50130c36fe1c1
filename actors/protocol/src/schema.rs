//! The protocol's JSON Schema, generated from the wire types with `schemars`, so
//! the schema cannot say what the types do not. The checked-in copy is
//! `actors/protocol/schema/protocol.schema.json`; `tests/schema.rs` fails when it
//! and the types drift apart. Regenerate it with
//! `UPDATE_SCHEMA=1 cargo test -p rendezvous-protocol --test schema`.
//!
//! The root accepts any frame; a client validates what it receives against
//! `#/$defs/ServerFrame` and what it sends against `#/$defs/ClientFrame`.

use schemars::JsonSchema;

use crate::{ClientFrame, ServerFrame};

/// Any frame of the protocol, in either direction (the schema's root).
#[derive(JsonSchema)]
#[schemars(
    title = "Rendezvous WebSocket protocol v1",
    description = "Every JSON text frame of the protocol: client frames carry `action`, server frames `type`. Generated from the Rust types in actors/protocol; see PROTOCOL.md."
)]
#[serde(untagged)]
#[allow(dead_code)]
enum Frame {
    Client(ClientFrame),
    Server(ServerFrame),
}

/// The schema as JSON (draft 2020-12).
pub fn json_schema() -> serde_json::Value {
    schemars::schema_for!(Frame).to_value()
}

/// The schema as the checked-in file holds it: pretty JSON ending in a newline.
pub fn json_schema_text() -> String {
    let mut text =
        serde_json::to_string_pretty(&json_schema()).unwrap_or_else(|e| format!("\"{e}\""));
    text.push('\n');
    text
}
