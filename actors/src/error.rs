//! Engine errors and how each maps to the wire. One table: [`EngineError::code`].

use rendezvous_protocol::ErrorCode;

/// Why an action a client asked for was refused. Every variant is recoverable for
/// the session: it turns into one `error` frame and the session carries on.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum EngineError {
    /// The frame was not valid JSON or not a known action with the right fields.
    #[error("{0}")]
    BadRequest(String),
    /// A field is over its configured size limit.
    #[error("{0}")]
    TooLarge(String),
    /// The room does not exist or the user is not one of its members.
    #[error("not a member of room {0}")]
    NotInRoom(String),
    /// A rate limit refused the action for this long.
    #[error("rate limit for {action} exceeded")]
    RateLimited { action: &'static str, retry_after_ms: u64 },
    /// A second `find_match` while one runs.
    #[error("a search is already running; cancel_match first")]
    AlreadySearching,
    /// The action needs a valid token for this session's user (`refresh`).
    #[error("{0}")]
    Unauthorized(String),
    /// The session's token expired; `refresh` within the grace period or be closed.
    #[error("your token has expired: send refresh with a new token within {grace_ms} ms or the session is closed with 4001")]
    TokenExpired { grace_ms: u64 },
    /// Not possible now, worth retrying after `retry_after_ms` (a store that
    /// cannot be reached, a node that is draining).
    #[error("{message}")]
    Unavailable { message: String, retry_after_ms: u64 },
    /// Something inside the engine failed (an actor is gone, a mailbox is closed).
    #[error("internal error: {0}")]
    Internal(String),
}

impl EngineError {
    /// The wire code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            EngineError::BadRequest(_) => ErrorCode::BadRequest,
            EngineError::TooLarge(_) => ErrorCode::TooLarge,
            EngineError::NotInRoom(_) => ErrorCode::NotInRoom,
            EngineError::RateLimited { .. } => ErrorCode::RateLimited,
            EngineError::AlreadySearching => ErrorCode::AlreadySearching,
            EngineError::Internal(_) => ErrorCode::Internal,
            EngineError::Unavailable { .. } => ErrorCode::Unavailable,
            EngineError::Unauthorized(_) => ErrorCode::Unauthorized,
            EngineError::TokenExpired { .. } => ErrorCode::TokenExpired,
        }
    }

    /// `retry_after_ms` for the error frame, when the client should wait.
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            EngineError::RateLimited { retry_after_ms, .. }
            | EngineError::Unavailable { retry_after_ms, .. } => Some(*retry_after_ms),
            _ => None,
        }
    }
}
