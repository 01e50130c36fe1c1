//! The checked-in JSON Schema is the one the types generate. When this fails,
//! the wire types changed: regenerate the file with
//! `UPDATE_SCHEMA=1 cargo test -p rendezvous-protocol --test schema` and commit it
//! (PROTOCOL.md describes every addition).

use std::path::PathBuf;

use rendezvous_protocol::schema::{json_schema, json_schema_text};
use rendezvous_protocol::{ErrorCode, ServerFrame};
use serde_json::Value;

fn schema_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schema/protocol.schema.json")
}

#[test]
fn the_checked_in_schema_matches_the_types() {
    let path = schema_path();
    let generated = json_schema_text();
    if std::env::var_os("UPDATE_SCHEMA").is_some_and(|v| v == "1") {
        std::fs::write(&path, &generated).expect("write the schema");
        eprintln!("wrote {}", path.display());
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "{} differs from the schema the types generate: run \
         `UPDATE_SCHEMA=1 cargo test -p rendezvous-protocol --test schema` and commit it",
        path.display()
    );
}

/// Every server frame type and error code is named in the schema (a sanity check
/// of the generation itself, not of the file).
#[test]
fn the_schema_names_every_frame_type_and_error_code() {
    let text = json_schema().to_string();
    let defs = &json_schema()["$defs"];
    for def in ["ClientFrame", "ServerFrame", "ChatMessage", "ErrorCode", "RoomDetail"] {
        assert!(defs.get(def).is_some_and(Value::is_object), "$defs/{def} missing");
    }
    let frame = ServerFrame::NoMatchFound {};
    assert!(text.contains(&format!("\"{}\"", frame.kind())));
    for kind in ["welcome", "history", "error", "ack", "message", "refreshed", "room_closed"] {
        assert!(text.contains(&format!("\"{kind}\"")), "type {kind} missing");
    }
    for code in [ErrorCode::Unavailable, ErrorCode::TokenExpired, ErrorCode::Internal] {
        assert!(text.contains(&format!("\"{}\"", code.as_str())), "code {code:?} missing");
    }
}
