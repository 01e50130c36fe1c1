//! Wire types of protocol v1: every frame a client sends ([`ClientFrame`]) and every
//! frame the server sends ([`ServerFrame`]), the error codes and the close codes.
//!
//! This crate owns the *shape* of the JSON on the wire and nothing else: no
//! validation beyond what serde enforces, no I/O. The engine, the integration tests
//! and the load tester all use it, so a renamed field breaks the build rather than a
//! client. It lives nested under `actors/` because the design fixes the top-level
//! folders; it is its own crate so that clients need not compile actix.
//!
//! Rules the types encode (see `PROTOCOL.md` at the repository root):
//! * client frames are tagged by `"action"`, server frames by `"type"`;
//! * unknown fields are ignored (serde's default), so clients may send extras;
//! * optional fields the server sends are omitted when absent.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[cfg(feature = "client")]
pub mod client;
pub mod schema;
pub mod trace;

/// A frame sent by a client. Unknown actions fail to parse and are answered with an
/// `error` frame of code `bad_request`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Enter the matching pool. `interests` is required (a missing field is a
    /// `bad_request`); an empty list is allowed.
    FindMatch {
        interests: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        language: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        region: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group_size: Option<u8>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_wait_ms: Option<u64>,
    },
    /// Leave the pool.
    CancelMatch {},
    /// Leave the current match room and search again with the last criteria.
    Next {},
    /// Post a chat message to a room.
    Send {
        room_id: String,
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_msg_id: Option<String>,
    },
    /// Typing indicator; relayed, never stored.
    Typing { room_id: String, active: bool },
    /// Read receipt up to `seq`.
    Read { room_id: String, seq: u64 },
    /// Opaque signaling payload (WebRTC SDP/ICE) relayed to one member or all others.
    Signal {
        room_id: String,
        payload: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<String>,
    },
    /// Never be matched with `user_id` again; closes a shared match room.
    Block { user_id: String },
    /// Join a named public room (`pub:` prefix).
    Join { room_id: String },
    /// Leave any room.
    Leave { room_id: String },
    /// Stored messages after `after_seq`.
    History {
        room_id: String,
        #[serde(default)]
        after_seq: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    /// Renew the session's token (before it expires, or within the grace after
    /// `token_expired`). Only for sessions that connected with a token.
    Refresh { token: String },
    /// Report a current or recent partner to the operators; the room's last
    /// messages are kept with the report as evidence.
    Report {
        user_id: String,
        room_id: String,
        #[serde(default)]
        reason: String,
    },
}

impl ClientFrame {
    /// The `action` tag, for metrics labels and error frames.
    pub fn action(&self) -> &'static str {
        match self {
            ClientFrame::FindMatch { .. } => "find_match",
            ClientFrame::CancelMatch {} => "cancel_match",
            ClientFrame::Next {} => "next",
            ClientFrame::Send { .. } => "send",
            ClientFrame::Typing { .. } => "typing",
            ClientFrame::Read { .. } => "read",
            ClientFrame::Signal { .. } => "signal",
            ClientFrame::Block { .. } => "block",
            ClientFrame::Join { .. } => "join",
            ClientFrame::Leave { .. } => "leave",
            ClientFrame::History { .. } => "history",
            ClientFrame::Refresh { .. } => "refresh",
            ClientFrame::Report { .. } => "report",
        }
    }
}

/// One stored chat message, as sent live (`type: message`) and inside `history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ChatMessage {
    pub room_id: String,
    /// Per-room sequence number: starts at 1, no gaps.
    pub seq: u64,
    pub msg_id: String,
    pub sender: String,
    pub text: String,
    /// Milliseconds since the Unix epoch, stamped by the server.
    pub ts: u64,
}

/// An entry of a `history` frame: a message object carrying its own `"type"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HistoryItem {
    Message(ChatMessage),
}

/// The protocol version this crate describes, sent in `welcome.protocol`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Kind of a room, as `welcome.room_details` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RoomKind {
    /// Opened for a match (`match_found`); closes when one member is left.
    Match,
    /// A named public room (`pub:` prefix, `join`).
    Public,
}

/// A room the user still holds a seat in, as `welcome` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RoomDetail {
    pub room_id: String,
    pub kind: RoomKind,
    /// Every member's user id, this user included.
    pub members: Vec<String>,
    /// The room's newest `seq` (0 before the first message): a client that saw
    /// less catches up with `history`.
    pub last_seq: u64,
}

/// One ICE server, in the shape of WebRTC's `RTCIceServer` (pass the list to
/// `new RTCPeerConnection({iceServers})` as is).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct IceServer {
    /// `stun:`, `stuns:`, `turn:` or `turns:` URLs.
    pub urls: Vec<String>,
    /// TURN only: `EXPIRY:USER_ID` (EXPIRY in seconds since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN only: base64(HMAC-SHA1(shared secret, username)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// Presence states reported for room members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PresenceStatus {
    /// Joined the room or came back within the grace period.
    Online,
    /// Connection dropped; the seat is kept for the grace period.
    Offline,
    /// Left the room for good.
    Left,
}

/// Error codes carried by `error` frames. Stable strings; new codes may be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed JSON, unknown action, missing or invalid field.
    BadRequest,
    /// The action needs an identity the session does not have.
    Unauthorized,
    /// A rate limit refused the action; `retry_after_ms` says when to retry.
    RateLimited,
    /// The room does not exist or the user is not a member.
    NotInRoom,
    /// A field is over its size limit (text, payload, interests).
    TooLarge,
    /// `find_match` while a search is already running.
    AlreadySearching,
    /// The server failed (a bug, or a part of it stopped); retrying may not help.
    Internal,
    /// The action could not be carried out now but may succeed later: send it
    /// again after `retry_after_ms` (the cluster's store is unreachable, the node
    /// is draining or full). A refused `send` was not stored.
    Unavailable,
    /// The session's token has expired: send `refresh` with a new token for the
    /// same user within the grace period, or the session is closed with 4001.
    TokenExpired,
}

impl ErrorCode {
    /// The wire string, for metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::NotInRoom => "not_in_room",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::AlreadySearching => "already_searching",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::TokenExpired => "token_expired",
        }
    }
}

/// A frame sent by the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// First frame of every session.
    Welcome {
        user_id: String,
        session_id: String,
        node: String,
        /// Rooms the user still belongs to (reconnect within the grace period).
        rooms: Vec<String>,
        /// Version of the protocol the server speaks ([`PROTOCOL_VERSION`]).
        /// Addition: 0 when read from a server older than the field.
        #[serde(default)]
        protocol: u32,
        /// One entry per room of `rooms` (same order): its kind, members and last
        /// `seq`, as the room held them when the session started. Addition.
        #[serde(default)]
        room_details: Vec<RoomDetail>,
        /// STUN/TURN servers for WebRTC calls, as `RTCIceServer` objects (TURN
        /// with time-limited credentials for this user). Absent when the server
        /// has none configured. Addition.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        ice_servers: Vec<IceServer>,
    },
    Searching {
        ticket: String,
    },
    MatchFound {
        room_id: String,
        /// Present when the match is a pair.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        partner_id: Option<String>,
        members: Vec<String>,
        shared_interests: Vec<String>,
        score: u32,
    },
    /// The search ran out of time.
    NoMatchFound {},
    MatchCancelled {},
    Blocked {
        user_id: String,
    },
    Ack {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_msg_id: Option<String>,
        room_id: String,
        seq: u64,
        msg_id: String,
    },
    Message(ChatMessage),
    Typing {
        room_id: String,
        user_id: String,
        active: bool,
    },
    Read {
        room_id: String,
        user_id: String,
        seq: u64,
    },
    Signal {
        room_id: String,
        from: String,
        payload: Value,
    },
    Joined {
        room_id: String,
        members: Vec<String>,
    },
    Left {
        room_id: String,
    },
    Presence {
        room_id: String,
        user_id: String,
        status: PresenceStatus,
    },
    RoomClosed {
        room_id: String,
        /// Why the room closed (`partner_left`, `blocked`, `empty`, …). Extension.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    History {
        room_id: String,
        messages: Vec<HistoryItem>,
        /// The oldest `seq` the server could still return for this request; older
        /// ones were trimmed for good. `after_seq + 1 < first_seq` means the
        /// messages `after_seq + 1 ..= first_seq - 1` are lost. `last_seq + 1` when
        /// nothing is stored. Addition (absent from older servers).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        first_seq: Option<u64>,
        /// The room's newest `seq` when the page was read: more pages follow while
        /// the last message's `seq` is below it. Addition.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_seq: Option<u64>,
    },
    /// Answer to `refresh`: the new token is in force.
    Refreshed {
        /// When the new token expires, in milliseconds since the Unix epoch. Extension.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<u64>,
    },
    /// Answer to `report`: the report is stored for the operators.
    Reported {
        /// The stored report's id. Extension.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        report_id: Option<String>,
    },
    Error {
        code: ErrorCode,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
        /// The action that failed, when known. Extension.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        action: Option<String>,
        /// The failed frame's `client_msg_id`, when it had one. Addition.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_msg_id: Option<String>,
    },
}

impl ServerFrame {
    /// Serialize to the JSON text of one WebSocket frame.
    pub fn to_json(&self) -> String {
        // Serialization of these plain structs (string keys, no maps with non-string
        // keys) cannot fail; fall back to an internal error frame just in case.
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"type":"error","code":"internal","message":"serialization failed"}"#.to_owned()
        })
    }

    /// The `type` tag, for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ServerFrame::Welcome { .. } => "welcome",
            ServerFrame::Searching { .. } => "searching",
            ServerFrame::MatchFound { .. } => "match_found",
            ServerFrame::NoMatchFound {} => "no_match_found",
            ServerFrame::MatchCancelled {} => "match_cancelled",
            ServerFrame::Blocked { .. } => "blocked",
            ServerFrame::Ack { .. } => "ack",
            ServerFrame::Message(_) => "message",
            ServerFrame::Typing { .. } => "typing",
            ServerFrame::Read { .. } => "read",
            ServerFrame::Signal { .. } => "signal",
            ServerFrame::Joined { .. } => "joined",
            ServerFrame::Left { .. } => "left",
            ServerFrame::Presence { .. } => "presence",
            ServerFrame::RoomClosed { .. } => "room_closed",
            ServerFrame::History { .. } => "history",
            ServerFrame::Refreshed { .. } => "refreshed",
            ServerFrame::Reported { .. } => "reported",
            ServerFrame::Error { .. } => "error",
        }
    }
}

/// Borrowing twins of the two frames sent for every chat message: the same JSON as
/// the [`ServerFrame`] variant of the same name, written from data the room
/// already holds instead of from a clone of it.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FrameRef<'a> {
    Ack {
        #[serde(skip_serializing_if = "Option::is_none")]
        client_msg_id: Option<&'a str>,
        room_id: &'a str,
        seq: u64,
        msg_id: &'a str,
    },
    Message(&'a ChatMessage),
}

impl FrameRef<'_> {
    /// Serialize to the JSON text of one WebSocket frame.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"type":"error","code":"internal","message":"serialization failed"}"#.to_owned()
        })
    }
}

/// WebSocket close codes the server uses, with what a client should do.
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// A frame was over the size limit; do not resend it.
    pub const TOO_LARGE: u16 = 1009;
    /// Unexpected server error; reconnect with backoff.
    pub const INTERNAL: u16 = 1011;
    /// The node is draining; reconnect (to another node) and resume with `history`.
    pub const RESTARTING: u16 = 1012;
    /// The node is full; retry later with backoff.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// Missing or bad credentials; do not reconnect with the same credentials.
    pub const UNAUTHORIZED: u16 = 4001;
    /// The user (or their address) is banned by an operator; do not reconnect
    /// until the ban ends (a new connection is refused the same way).
    pub const BANNED: u16 = 4003;
    /// An operator disconnected this session (kick); reconnecting is allowed.
    pub const KICKED: u16 = 4004;
    /// Policy violation: flooding, or a client too slow to read its frames.
    pub const POLICY: u16 = 4008;
    /// A newer connection of the same user replaced this one; do not reconnect.
    pub const REPLACED: u16 = 4009;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn borrowed_frames_write_the_same_json_as_owned_ones() {
        let msg = ChatMessage {
            room_id: "r1".into(),
            seq: 7,
            msg_id: "m1".into(),
            sender: "ann".into(),
            text: "h\u{e9}llo \"you\"".into(),
            ts: 1_700_000_000_000,
        };
        assert_eq!(FrameRef::Message(&msg).to_json(), ServerFrame::Message(msg.clone()).to_json());
        for client_msg_id in [None, Some("c-1")] {
            let borrowed = FrameRef::Ack { client_msg_id, room_id: "r1", seq: 7, msg_id: "m1" };
            let owned = ServerFrame::Ack {
                client_msg_id: client_msg_id.map(str::to_owned),
                room_id: "r1".into(),
                seq: 7,
                msg_id: "m1".into(),
            };
            assert_eq!(borrowed.to_json(), owned.to_json());
        }
    }

    #[test]
    fn client_frames_parse_with_defaults_and_extra_fields() {
        let f: ClientFrame =
            serde_json::from_str(r#"{"action":"find_match","interests":["chess"],"x":1}"#)
                .expect("parse");
        assert_eq!(
            f,
            ClientFrame::FindMatch {
                interests: vec!["chess".into()],
                language: None,
                region: None,
                group_size: None,
                max_wait_ms: None
            }
        );
        let f: ClientFrame = serde_json::from_str(r#"{"action":"cancel_match"}"#).expect("parse");
        assert_eq!(f, ClientFrame::CancelMatch {});
        let f: ClientFrame =
            serde_json::from_str(r#"{"action":"history","room_id":"r1"}"#).expect("parse");
        assert_eq!(f, ClientFrame::History { room_id: "r1".into(), after_seq: 0, limit: None });
    }

    #[test]
    fn find_match_needs_interests_but_not_one() {
        assert!(serde_json::from_str::<ClientFrame>(r#"{"action":"find_match"}"#).is_err());
        let f: ClientFrame =
            serde_json::from_str(r#"{"action":"find_match","interests":[]}"#).expect("parse");
        assert!(matches!(f, ClientFrame::FindMatch { interests, .. } if interests.is_empty()));
    }

    #[test]
    fn unknown_action_and_missing_fields_fail() {
        assert!(serde_json::from_str::<ClientFrame>(r#"{"action":"dance"}"#).is_err());
        assert!(serde_json::from_str::<ClientFrame>(r#"{"action":"send","text":"x"}"#).is_err());
        assert!(serde_json::from_str::<ClientFrame>(
            r#"{"action":"read","room_id":"r","seq":"7"}"#
        )
        .is_err());
        assert!(serde_json::from_str::<ClientFrame>(r#"{"action":"refresh"}"#).is_err());
    }

    #[test]
    fn refresh_and_token_expired_match_the_contract() {
        let f: ClientFrame =
            serde_json::from_str(r#"{"action":"refresh","token":"a.b.c"}"#).expect("parse");
        assert_eq!(f, ClientFrame::Refresh { token: "a.b.c".into() });
        assert_eq!(f.action(), "refresh");
        assert_eq!(
            ServerFrame::Refreshed { expires_at: None }.to_json(),
            r#"{"type":"refreshed"}"#
        );
        assert_eq!(
            ServerFrame::Refreshed { expires_at: Some(7) }.to_json(),
            r#"{"type":"refreshed","expires_at":7}"#
        );
        let e = ServerFrame::Error {
            code: ErrorCode::TokenExpired,
            message: "renew".into(),
            retry_after_ms: None,
            action: None,
            client_msg_id: None,
        };
        assert!(e.to_json().contains(r#""code":"token_expired""#));
        assert_eq!(ErrorCode::TokenExpired.as_str(), "token_expired");
    }

    #[test]
    fn report_and_reported_match_the_contract() {
        let f: ClientFrame = serde_json::from_str(
            r#"{"action":"report","user_id":"u2","room_id":"r1","reason":"spam"}"#,
        )
        .expect("parse");
        assert_eq!(
            f,
            ClientFrame::Report {
                user_id: "u2".into(),
                room_id: "r1".into(),
                reason: "spam".into()
            }
        );
        assert_eq!(f.action(), "report");
        let f: ClientFrame =
            serde_json::from_str(r#"{"action":"report","user_id":"u2","room_id":"r1"}"#)
                .expect("reason is optional");
        assert!(matches!(f, ClientFrame::Report { reason, .. } if reason.is_empty()));
        assert_eq!(ServerFrame::Reported { report_id: None }.to_json(), r#"{"type":"reported"}"#);
        assert_eq!(ServerFrame::Reported { report_id: None }.kind(), "reported");
    }

    #[test]
    fn server_frames_match_the_contract() {
        let m = ServerFrame::Message(ChatMessage {
            room_id: "r1".into(),
            seq: 7,
            msg_id: "m1".into(),
            sender: "u1".into(),
            text: "hi".into(),
            ts: 1,
        });
        let v: Value = serde_json::from_str(&m.to_json()).expect("json");
        assert_eq!(v["type"], "message");
        assert_eq!(v["seq"], 7);
        let h = ServerFrame::History {
            first_seq: Some(1),
            last_seq: Some(1),
            room_id: "r1".into(),
            messages: vec![HistoryItem::Message(ChatMessage {
                room_id: "r1".into(),
                seq: 1,
                msg_id: "m".into(),
                sender: "u".into(),
                text: "t".into(),
                ts: 2,
            })],
        };
        let v: Value = serde_json::from_str(&h.to_json()).expect("json");
        assert_eq!(v["messages"][0]["type"], "message");
        let e = ServerFrame::Error {
            code: ErrorCode::RateLimited,
            message: "slow down".into(),
            retry_after_ms: Some(1200),
            action: None,
            client_msg_id: None,
        };
        assert_eq!(
            e.to_json(),
            r#"{"type":"error","code":"rate_limited","message":"slow down","retry_after_ms":1200}"#
        );
        assert_eq!(ServerFrame::NoMatchFound {}.to_json(), r#"{"type":"no_match_found"}"#);
        let p = ServerFrame::Presence {
            room_id: "r".into(),
            user_id: "u".into(),
            status: PresenceStatus::Offline,
        };
        assert!(p.to_json().contains(r#""status":"offline""#));
    }
}
